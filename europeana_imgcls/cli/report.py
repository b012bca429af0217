"""How the CLI shows what a stage did: rich tables on stdout, JSON files on request.

Every path and every value that comes from data (a category, a record ID, a reason quoting a URL, a column's
name) is printed through ``plain``: rich would take ``[/b]`` for markup (a MarkupError once the work is done) and
``[link=...]`` for a hyperlink a table's author chose. Only eic's own words carry markup."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..europeana.annotation_standin import SANDBOX_TOKEN

if TYPE_CHECKING:
    from ..acquisition.curation import TableStats
    from ..acquisition.download import DownloadReport
    from ..acquisition.harvest import HarvestReport
    from ..europeana.sandbox import Sandbox
    from ..modelling.calibration import Calibration
    from ..modelling.embedding import EmbedReport
    from ..outputs.audit import AuditReport
    from ..outputs.enrichment import EnrichReport
    from ..outputs.evaluation import EvaluateReport
    from ..outputs.export import ExportReport
    from ..outputs.prediction import PredictReport
    from ..outputs.publish import PublishReport, WithdrawReport
    from ..outputs.review import ReviewImportReport
    from ..outputs.review_apply import ReviewApplyReport


# What makes a review task's local image show in Label Studio (docs/review.md says how to serve it).
LOCAL_IMAGES = "pass --document-root (Label Studio serves them) or --image-url (a web server does)"


def plain(value: object) -> str:
    """A path or a value from data as rich prints it: as it is, never markup."""
    return escape(str(value))


def as_flags(message: str) -> str:
    """Library messages name settings (`output_dir`); on the command line they are flags (--output-dir). (An
    EicError's message is one line already: it escapes the line ends and controls a value brings.)"""
    message = message.replace("`crossvalidation` off", "--no-crossvalidation")
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: "--" + m.group(1).replace("_", "-"), message)


def print_harvest(console: Console, result: HarvestReport) -> None:
    from ..acquisition.sources import Unit  # loaded by the harvest already; not at every command's start

    levels = sorted({Unit.level_of(key) for key in result.fetched})
    table = Table(title="harvest", show_footer=False)
    table.add_column("category")
    for level in levels:
        table.add_column(f"fetched ({plain(level)})", justify="right")
    table.add_column("rows in table", justify="right")
    for category, count in result.per_category.items():
        fetched = [str(result.fetched.get(f"{category}|{level}", "-")) for level in levels]
        if any(f != "-" for f in fetched) or count:
            table.add_row(plain(category), *fetched, str(count))
    console.print(table)
    done = (
        f"shard {result.shard}: {result.rows} records journaled for {plain(result.output)}"
        if result.shard
        else f"{result.rows} records written to {plain(result.output)}"
    )
    console.print(
        f"{done}; skipped {result.skipped_no_url} without an "
        f"image URL; {result.ambiguous} found under several categories"
        + (f"; {result.resumed_units} units already done" if result.resumed_units else "")
    )
    if result.left_out:  # a bulk source reads every record of a dataset: say what it left out, and why
        reasons = ", ".join(f"{count} {plain(reason)}" for reason, count in sorted(result.left_out.items()))
        console.print(f"left out: {reasons}")
    if result.shard:
        console.print("the run without --shard (with --resume) writes the table")


def print_stats(console: Console, stats: TableStats) -> None:
    console.print(
        f"{stats.rows} rows, {stats.unique_ids} unique IDs, {stats.duplicate_rows} duplicate rows, "
        f"{stats.without_url} without URL, {stats.without_category} without category, "
        f"{stats.ids_in_several_categories} IDs in several "
        f"categories"
    )
    for title, counts in (
        ("category", stats.per_category),
        ("reusability", stats.per_reusability),
        (stats.provider_column, stats.per_provider),
    ):
        if not counts:
            continue
        table = Table(title=f"records per {plain(title)}")
        table.add_column(plain(title))
        table.add_column("records", justify="right")
        for name, count in list(counts.items())[:30]:
            table.add_row(plain(name), str(count))
        if len(counts) > 30:
            table.add_row(f"... {len(counts) - 30} more", "")
        console.print(table)
    if stats.unknown_categories:
        listed = ", ".join(f"{plain(repr(name))} ({n})" for name, n in stats.unknown_categories.items())
        console.print(f"[bold yellow]categories not in the vocabulary:[/] {listed}")


def print_download(console: Console, result: DownloadReport) -> None:
    console.print(
        f"{result.saved} images saved into {plain(result.output_dir)} in {result.seconds:.1f} s "
        f"({result.images_per_second:.1f} images/s), {result.already_saved} already there, {result.failed} failed"
        + (
            f", {result.known_failures} known failures skipped (--retry-failed retries them)"
            if result.known_failures
            else ""
        )
        + (f", {result.other_shards} left to other shards" if result.other_shards else "")
        + (
            f", {sum(result.skipped.values())} rows skipped ("
            + ", ".join(f"{n} {plain(why)}" for why, n in result.skipped.items())
            + ")"
            if result.skipped
            else ""
        )
        + f"; {result.total} rows in the table"
    )
    if result.moved or result.set_aside:
        console.print(
            f"{result.moved} records moved to the class the table now gives them (not fetched again)"
            + (f", {result.set_aside} set aside ({plain(result.set_aside_file)})" if result.set_aside else "")
        )
    if result.left:
        console.print(
            f"{result.left} records the table does not hold left where they are in {plain(result.output_dir)} "
            "(--prune sets them aside, into .eic-set-aside/)"
        )
    if result.errors:
        errors = sorted(result.errors.items(), key=lambda kv: -kv[1])
        reasons = ", ".join(f"{plain(reason)}: {n}" for reason, n in errors)
        console.print(f"failures ({plain(result.failures_file or result.output_dir / 'failures.csv')}): {reasons}")


def print_summary(console: Console, title: str, summary: dict[str, dict[str, object]]) -> None:
    """A metric table: mean ± std across splits, and the per-split values."""
    table = Table(title=plain(title))
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    table.add_column("per split", justify="left")
    for name, values in summary.items():
        splits: list[float] = values["per_split"]  # type: ignore[assignment]  # mean_std's list
        per_split = " ".join(f"{v:.3f}" for v in splits)
        table.add_row(plain(name), f"{values['mean']:.3f} ± {values['std']:.3f}", per_split)
    console.print(table)


def print_calibration(console: Console, calibration: Calibration) -> None:
    """The per-class thresholds, with what each promises and what it costs in coverage."""
    table = Table(
        title=f"thresholds for precision {calibration.precision_target:.2f} ({plain(calibration.source)}; "
        f"ECE {calibration.ece_before:.3f} → {calibration.ece_after:.3f})"
    )
    for name in ("class", "threshold", "precision", "coverage", "support"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for c in calibration.per_class:
        if c.threshold is None:
            table.add_row(plain(c.name), "never emitted", "–", "0.000", str(c.support))
        else:
            row = (f"{c.threshold:.4f}", f"{c.precision:.3f}", f"{c.coverage:.3f}", str(c.support))
            table.add_row(plain(c.name), *row)
    console.print(table)


def print_export(console: Console, result: ExportReport) -> None:
    """Each file with how far it is from PyTorch; an int8 export also with how far it moved from float32."""
    table = Table(title=f"ONNX export of model {plain(result.model_id)}")
    for name in ("split", "file", "largest probability difference to PyTorch", "checked on"):
        table.add_column(name, justify="right" if name.startswith("largest") else "left")
    for split, path in zip(result.splits, result.files, strict=True):
        table.add_row(
            plain(split), plain(path.name), f"{result.max_difference[split]:.2e}", plain(result.checked_on[split])
        )
    console.print(table)
    for check in result.quantisation:

        def shown(value: float | None) -> str:
            return "–" if value is None else f"{value:.3f}"

        console.print(
            f"{plain(check.split)} int8 ({plain(result.quantize)}): same top class as float32 on "
            f"{check.agreement:.1%} of "
            f"{check.images} images; {plain(check.metric)} {shown(check.before)} → {shown(check.after)}"
        )
        if check.controlled or check.capped:
            cap = " (its cap reached)" if check.capped else ""
            console.print(
                f"  accuracy control: {len(check.controlled)} node(s) kept in float32{cap}, same top class on "
                f"{min(check.control_agreement.values(), default=0):.1%} of {check.control_images} calibration images"
            )
    console.print(f"written to {plain(result.output)} (model.json says how to feed it: docs/deploy.md)")


def print_evaluation(console: Console, result: EvaluateReport) -> None:
    print_summary(console, f"{result.images} evaluation images, {len(result.splits)} split(s)", result.summary)
    if result.unknown_classes:
        listed = ", ".join(f"{plain(name)} ({n} images)" for name, n in result.unknown_classes.items())
        console.print(f"[yellow]evaluation classes the model does not know (skipped):[/] {listed}")
    if result.missing_classes:
        missing = ", ".join(plain(name) for name in result.missing_classes)
        console.print(f"[yellow]model classes with no evaluation images:[/] {missing}")
    if result.unreadable:
        console.print(f"[yellow]{len(result.unreadable)} unreadable images skipped[/] (listed in report.json)")
    if result.calibration_check:
        print_calibration_check(console, result.calibration_check)
    console.print(f"written to {plain(result.output_dir)}")


def print_calibration_check(console: Console, rows: list[dict[str, object]]) -> None:
    """What the calibration promised out of fold against what it keeps on the evaluation set."""
    table = Table(title="the calibration's thresholds on the evaluation set (all splits pooled)")
    for name in ("class", "threshold", "promised precision", "precision here", "coverage here", "labelled"):
        table.add_column(name, justify="left" if name == "class" else "right")

    def shown(value: object) -> str:
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    for row in rows:
        table.add_row(
            plain(row["class"]),
            shown(row["threshold"]) if row["threshold"] is not None else "never emitted",
            shown(row["out_of_fold_precision"]),
            shown(row["precision"]),
            shown(row["coverage"]),
            shown(row["labelled"]),
        )
    console.print(table)


def shard_note(shard: str | None, command: str, output: Path) -> str:
    """What a shard's run leaves to do."""
    return (
        (
            f"; shard {plain(shard)} done: when every shard is, run eic {command} without --shard and with --resume "
            f"to merge them into {plain(output)}"
        )
        if shard
        else ""
    )


def print_prediction(console: Console, result: PredictReport) -> None:
    model = plain("an ensemble of " + ", ".join(result.splits) if len(result.splits) > 1 else result.splits[0])
    written = f"the journal {plain(result.journal)}" if result.shard else plain(result.output)
    console.print(
        f"{result.predicted} images labelled with {model} ({plain(result.engine)}); written to {written}"
        + (f"; {result.already_done} done earlier" if result.already_done else "")
        + (
            f"; {len(result.unreadable)} unreadable ({plain(', '.join(result.unreadable[:3]))}"
            + (", ..." if len(result.unreadable) > 3 else "")
            + ")"
            if result.unreadable
            else ""
        )
        + (f"; {result.not_fetched} could not be fetched" if result.not_fetched else "")
        + (f"; {result.heatmaps} Grad-CAM figures" if result.heatmaps else "")
        + shard_note(result.shard, "predict", result.output)
    )


def print_enrichment(console: Console, result: EnrichReport) -> None:
    if result.shard:
        console.print(
            f"{result.records} records scored into the journal of {plain(result.predictions)}"
            + (f"; {result.already_done} done earlier" if result.already_done else "")
            + shard_note(result.shard, "enrich", result.output)
        )
        return
    share = result.labelled / result.records if result.records else 0.0
    model = plain("an ensemble of " + ", ".join(result.splits) if len(result.splits) > 1 else result.splits[0])
    console.print(
        f"{result.labelled} of {result.records} records labelled ({share:.1%}) at precision "
        f"{result.precision_target:.2f}, {result.abstained} abstained; {result.annotations} annotations written to "
        f"{plain(result.output)} by {model} (model {plain(result.model_id)}, {plain(result.engine)})"
        + (f"; {result.already_done} done earlier" if result.already_done else "")
        + (f"; {len(result.unreadable)} unreadable" if result.unreadable else "")
        + (f"; {result.not_fetched} could not be fetched" if result.not_fetched else "")
        + (f"; {result.not_records} inputs name no record and were not annotated" if result.not_records else "")
    )
    for reason, count in result.refused.items():
        console.print(f"[yellow]not annotated:[/] {count} record(s) with {plain(reason)}")
    if result.per_class:
        console.print(
            "per class: "
            + ", ".join(f"{plain(c)} {n}" for c, n in sorted(result.per_class.items(), key=lambda kv: -kv[1]))
        )
    if result.never_emitted:
        never = ", ".join(plain(name) for name in result.never_emitted)
        console.print(f"[yellow]never emitted at this precision:[/] {never}")
    if result.review_output is not None:
        console.print(
            f"{result.review_tasks} records to review in {plain(result.review_output)} (Label Studio tasks; "
            f"labelling config beside it)"
            + (f"; {result.review_local} show a local file: {LOCAL_IMAGES}" if result.review_local else "")
        )


def print_review_import(console: Console, result: ReviewImportReport) -> None:
    console.print(
        f"{result.imported} reviewed records written to {plain(result.output)}"
        + (f"; {len(result.skipped)} tasks skipped (not labelled, cancelled or not a record)" if result.skipped else "")
        + (f"; {len(result.conflicts)} tasks where reviewers disagree" if result.conflicts else "")
        + (f"; {len(result.removed)} records put in no class" if result.removed else "")
    )
    for task, reason in result.refused:
        console.print(f"[yellow]refused:[/] task {plain(task)}: {plain(reason)}", soft_wrap=True)


def print_review_apply(console: Console, result: ReviewApplyReport) -> None:
    console.print(
        f"{result.rows} rows written to {plain(result.output)}: {result.confirmed} labels confirmed, "
        f"{len(result.changed)} changed, {len(result.removed)} records removed (put in no class)"
        + (f", {result.added} reviewed records added" if result.added else "")
        + (
            f", {len(result.unknown)} reviewed records not in the table (--add adds them)"
            if result.unknown and not result.added
            else ""
        )
        + (f"; {len(result.conflicting)} where reviewers disagree left as they were" if result.conflicting else "")
    )
    console.print(
        f"next: eic download {plain(result.output)} into the same folder moves the changed records and sets the "
        "removed ones aside"
    )


def print_audit(console: Console, result: AuditReport) -> None:
    console.print(
        f"{result.issues} of {result.images} images look mislabelled (label_issues.csv, suspects.png); "
        f"{result.duplicate_groups} near-duplicate groups: {result.leaking_groups} across folds, "
        f"{result.conflicting_groups} with conflicting labels, {result.cross_provider_groups} across "
        f"providers (duplicates.csv)"
    )
    if result.top:
        table = Table(title="worst suspects")
        for name in ("rank", "image or record", "given", "suggested", "label quality"):
            table.add_column(name)
        for row in result.top[:10]:
            table.add_row(
                str(row["rank"]),
                plain(row["ID"] or Path(row["image"]).name),
                plain(row["given"]),
                plain(row["suggested"]),
                f"{row['label_quality']:.3f}",
            )
        console.print(table)
    if result.worst_providers:
        console.print(
            "providers with the most issues: "
            + ", ".join(f"{plain(name)} ({n}, {rate:.0%})" for name, n, rate in result.worst_providers)
        )
    if result.note:
        console.print(f"[yellow]note:[/] {plain(as_flags(result.note))}")
    if result.review_output is not None:
        local = result.review_tasks - result.web_images
        console.print(
            f"{result.review_tasks} suspects to review in {plain(result.review_output)} (Label Studio tasks; labelling "
            "config beside it)" + (f"; {local} show a local file: {LOCAL_IMAGES}, or --table" if local else "")
        )
    console.print(f"written to {plain(result.output_dir)}")


def print_embedding(console: Console, result: EmbedReport) -> None:
    target = (
        f"its journal {plain(result.journal)}" if result.shard else f"{result.dim} dimensions -> {plain(result.output)}"
    )
    console.print(
        f"{result.embedded} images embedded in {result.seconds:.1f} s ({result.images_per_second:.1f} "
        f"images/s), {target}"
        + (f"; {result.already_done} done earlier" if result.already_done else "")
        + (f"; {result.unreadable} unreadable" if result.unreadable else "")
        + shard_note(result.shard, "embed", result.output)
    )


def print_sandbox(console: Console, server: Sandbox) -> None:
    """Where the sandbox answers, and the settings that point every eic command at it."""
    console.print(f"Search API: {server.api_url}")
    console.print(f"Thumbnail API: {server.base_url}/thumbnail/v3")
    console.print(f"OAI-PMH: {server.base_url}/oai", soft_wrap=True)
    # The example is a dataset with images: the largest may hold only texts, which a harvest leaves out.
    shown = next((r.dataset for r in server.catalogue if r.type == "IMAGE" and r.has_url), server.datasets[0])
    console.print(f"Dataset dumps: {server.dump_url(shown)} (one per dataset)", soft_wrap=True)
    console.print("Point eic at it (every command reads these), in the shell that runs eic:")
    console.print(f"  export EUROPEANA_API_URL={server.api_url}", soft_wrap=True)
    console.print(f"  export EUROPEANA_OAI_URL={server.base_url}/oai", soft_wrap=True)
    console.print(f"  export EUROPEANA_THUMBNAIL_URL={server.base_url}/thumbnail/v3", soft_wrap=True)
    console.print(f"  export EUROPEANA_ANNOTATION_API={server.base_url}", soft_wrap=True)
    console.print(f"  export EUROPEANA_ANNOTATION_TOKEN={SANDBOX_TOKEN}", soft_wrap=True)
    console.print(
        "then try: eic harvest --n 10 --output sandbox.csv (and eic publish, eic withdraw: its Annotations "
        "API applies Europeana's rules)"
    )


def print_publish(console: Console, result: PublishReport) -> None:
    models = ", ".join(f"{m} ({n})" for m, n in result.models.most_common())
    where = plain(result.where)  # Europeana, or another API (the sandbox) by its address
    gone = f" ({result.gone} of them gone from it since)" if result.gone else ""
    if result.dry_run:
        console.print(
            f"{result.annotations} annotations checked with Europeana's rules (models: {models}); "
            f"{result.to_send} to send to {where}, {result.published_before} published earlier{gone}"
            + (f", {result.found} found there already" if result.found else "")
            + "; nothing was sent (dry run)",
            soft_wrap=True,
        )
    else:
        console.print(
            f"{result.sent} annotations sent to {where}; {result.published_before} published earlier{gone}"
            + (f"; {result.found} found there already, not sent again" if result.found else "")
            + f"; models: {models}; journal: {plain(result.journal)}",
            soft_wrap=True,
        )
    if result.changed:
        console.print(
            f"[yellow]{len(result.changed)} changed since they were published[/] (not sent again; {where} holds what "
            "was sent: eic withdraw, then eic publish, replaces them): "
            + ", ".join(plain(c) for c in result.changed[:5])
            + (" ..." if len(result.changed) > 5 else ""),
            soft_wrap=True,
        )
    for canonical, message in result.rejected:
        console.print(f"[yellow]refused by {where}:[/] {plain(canonical)}: {plain(message)}", soft_wrap=True)


def print_withdraw(console: Console, result: WithdrawReport) -> None:
    where = plain(result.where)
    found = " (found by their generator)" if result.by_search else ""
    if result.dry_run:
        console.print(
            f"{result.remaining} annotations of model {result.model} would be deleted from {where}{found} (dry run)",
            soft_wrap=True,
        )
        return
    console.print(
        f"{result.withdrawn} annotations of model {result.model} deleted from {where}{found}"
        + (f"; {result.gone_before} were gone already" if result.gone_before else "")
        + (f"; {result.withdrawn_before} withdrawn earlier" if result.withdrawn_before else ""),
        soft_wrap=True,
    )
    if result.not_the_models:
        console.print(
            f"[yellow]left:[/] {result.not_the_models} annotations its journals name are not model {result.model}'s "
            f"on {where} (another model's generator): a journal edited or damaged",
            soft_wrap=True,
        )


def withdraw_refusals(result: WithdrawReport) -> str | None:
    """What ``eic withdraw`` ends with when the API refused to delete some: its one error line, or None."""
    if not result.refused:
        return None
    return (
        f"{result.refused} annotation{'s' if result.refused > 1 else ''} of model {result.model} stay on "
        f"{result.where}: it refused to delete them (403: {result.refusal}); another account created them (one "
        "that published the same model's tags first): its token withdraws them"
    )
