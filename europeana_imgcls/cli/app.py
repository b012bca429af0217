"""The ``eic`` command: each subcommand builds one config and calls one library function.

A command's options come from its config's fields (``options.py``); this module says only which fields are
positional arguments, which flags have a short form, and how each result is shown. The library stages are
imported when their command runs, so ``eic harvest`` starts without loading torch.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from ..core.config import (
    AuditConfig,
    CalibrateConfig,
    DemoConfig,
    DownloadConfig,
    EmbedConfig,
    EnrichConfig,
    EvaluateConfig,
    ExportConfig,
    HarvestConfig,
    PredictConfig,
    PublishConfig,
    ReportConfig,
    ReviewApplyConfig,
    ReviewImportConfig,
    SandboxConfig,
    StatsConfig,
    SubtractConfig,
    TrainConfig,
    WithdrawConfig,
)
from ..core.dependencies import missing_module, missing_package
from ..core.errors import EicError
from . import report
from .options import Arg, CommandSpec, config_command


class _Commands(typer.core.TyperGroup):
    """eic's command group: a usage error (a missing option, an unknown one, a value of the wrong type, an unknown
    command) is one line on stderr, as every other refusal, not click's framed box; exit code 2 as click's."""

    def main(  # type: ignore[override]  # always ends in SystemExit where click's may return
        self, args: Sequence[str] | None = None, standalone_mode: bool = True, **kwargs: Any
    ) -> Any:
        # typer names no usage error of its own: its bundled click's (typer installs no click).
        from typer._click.exceptions import NoArgsIsHelpError, UsageError

        if not standalone_mode:
            return super().main(args, standalone_mode=False, **kwargs)
        try:
            code = super().main(args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:  # `eic`, `eic review`: the help, as before
            error.show()
            sys.exit(error.exit_code)
        except UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else self._named(args)
            message = " ".join(error.format_message().split()).rstrip(".")
            print(f"eic: error: {message} (see `{where} --help`)", file=sys.stderr)
            sys.exit(error.exit_code)
        except typer.Abort:  # the end of input at a prompt
            print("eic: error: aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def _named(self, args: Sequence[str] | None) -> str:
        """The command the words name (``eic review apply``), where click has no context of it yet (a value
        missing after an option)."""
        words: list[str] = ["eic"]
        command: Any = self
        for word in sys.argv[1:] if args is None else args:
            found = command.commands.get(word) if isinstance(command, typer.core.TyperGroup) else None
            if found is None:
                break
            words.append(word)
            command = found
        return " ".join(words)


app = typer.Typer(
    cls=_Commands,
    name="eic",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # configs hold the API key
    help="Europeana records to trained image classifiers. Try `eic demo` first: the whole pipeline, offline.",
)
review_app = typer.Typer(no_args_is_help=True, help="The review loop: Label Studio exports back into tables.")
app.add_typer(review_app, name="review")
console = Console(emoji=False)  # ":map:" in a category is text, not an emoji; paths and values go through plain()
T = TypeVar("T")
OUTPUT = {"output": ("--output", "-o")}
OUTPUT_DIR = {"output_dir": ("--output-dir", "-o")}
RUN = Arg("run", metavar="RUN")
# Commands that carry on when run again as they were; the others that keep work carry on with --resume.
RERUN = (
    "download",
    "subtract",
    "stats",
    "evaluate",
    "calibrate",
    "export",
    "audit",
    "report",
    "sandbox",
    "import",
    "apply",
    "publish",
    "withdraw",
)


def run(action: Callable[[], T], command: str, interrupted: str | None = None) -> T:
    """Call the library; an EicError becomes one line on stderr and a non-zero exit code (``interrupted``: what
    Ctrl-C says, where the command's own words are better than the rule below)."""
    try:
        return action()
    except EicError as exc:
        typer.echo(f"eic: error: {report.as_flags(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        again = interrupted or (
            "run the same command again to carry on"
            if command == "download"
            else ("run it again" if command in RERUN else "run the same command with --resume to carry on")
        )
        typer.echo(f"eic: interrupted; what was finished is kept ({again})", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:  # the file system said no (a full disk, a path through a file, no permission)
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"eic: error: {EicError(f'{where}{exc.strerror or exc}')}", err=True)  # one line, whatever the path
        raise typer.Exit(1) from None


def _missing(exc: ModuleNotFoundError, command: str) -> NoReturn:
    """A package eic cannot import: one line naming what to install. A module of eic's own, or one missing from a
    package that is there (a typo, a version without it), is a fault: its traceback shows where."""
    if not exc.name or exc.name.split(".")[0] == "europeana_imgcls" or not missing_package(exc.name):
        raise exc
    typer.echo(f"eic: error: {missing_module(exc.name, command)}", err=True)
    raise typer.Exit(1) from None


def _importing(action: Callable[[Any], None], command: str) -> Callable[[Any], None]:
    """``action``, whose imports (torch, for most commands; the library's own, as it runs) fail as one line, as the
    library's errors do."""

    @functools.wraps(action)
    def guarded(config: Any) -> None:
        try:
            action(config)
        except ModuleNotFoundError as exc:
            _missing(exc, command)

    return guarded


def command(
    name: str,
    model: type[Any],
    *,
    arguments: tuple[Arg, ...] = (),
    names: dict[str, Any] | None = None,
    target: typer.Typer = app,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Decorate a function of the built config as the command ``name`` (its docstring is the command's help)."""

    def decorate(action: Callable[[Any], None]) -> Callable[[Any], None]:
        group = "review" if target is review_app else ""
        spec = CommandSpec(name, model, arguments, names or {}, action.__doc__ or "", group)
        config_command(target, spec, _importing(action, spec.full_name), run)
        return action

    return decorate


@command(
    "harvest",
    HarvestConfig,
    names={
        **OUTPUT,
        "n": ("--n", "-n"),
        "keep_ambiguous": ("--keep-ambiguous/--drop-ambiguous",),
        "from_date": ("--from", "--from-date"),  # --from-date: as a message names `from_date`
        "metadata_source": ("--source",),
    },
)
def harvest(config: HarvestConfig) -> None:
    """Records per concept (or 2-3 concept combination), from the Search API, OAI-PMH or dataset dumps, as a table."""
    from ..acquisition.harvest import harvest as run_harvest

    report.print_harvest(console, run(lambda: run_harvest(config), "harvest"))


@command("subtract", SubtractConfig, arguments=(Arg("train"), Arg("eval")), names=OUTPUT)
def subtract(config: SubtractConfig) -> None:
    """Remove from a training table every record whose ID is in an evaluation table."""
    from ..acquisition.curation import subtract as run_subtract

    result = run(lambda: run_subtract(config), "subtract")
    console.print(f"kept {result.kept} rows, removed {result.removed}; wrote {report.plain(result.output)}")


@command("stats", StatsConfig, arguments=(Arg("table"),), names=OUTPUT)
def stats(config: StatsConfig) -> None:
    """Records per category, reusability level and provider, and what looks wrong in a table."""
    from ..acquisition.curation import stats as run_stats

    report.print_stats(console, run(lambda: run_stats(config), "stats"))


@command("download", DownloadConfig, arguments=(Arg("table"),), names=OUTPUT_DIR)
def download(config: DownloadConfig) -> None:
    """Fetch the images of a table into class folders (or one folder plus labels.csv)."""
    from ..acquisition.download import download as run_download

    report.print_download(console, run(lambda: run_download(config), "download"))


@command("train", TrainConfig, arguments=(Arg("data_dir"),), names=OUTPUT_DIR)
def train(config: TrainConfig) -> None:
    """Fine-tune a ResNet (or another registered model) with stratified k-fold cross-validation."""
    from ..modelling.runtime import main_process
    from ..modelling.training import train as run_train

    result = run(lambda: run_train(config), "train")
    if result.summary and main_process():
        report.print_summary(console, f"test metrics over {len(result.splits)} split(s)", result.summary)
        if result.calibration is not None:
            report.print_calibration(console, result.calibration)
        elif result.calibration_note:
            console.print(f"[yellow]not calibrated:[/] {report.plain(report.as_flags(result.calibration_note))}")
        console.print(f"run written to {report.plain(result.output_dir)}")
        console.print(_report_hint(config.output_dir))


@command("calibrate", CalibrateConfig, arguments=(RUN,))
def calibrate(config: CalibrateConfig) -> None:
    """Per-class thresholds for a precision target, from a run's calibrated out-of-fold predictions."""
    from ..modelling.calibration import calibrate as run_calibrate
    from ..modelling.run_folder import RunFolder

    report.print_calibration(console, run(lambda: run_calibrate(config), "calibrate"))
    folder = RunFolder(config.run)
    written = ", ".join(report.plain(path) for path in (folder.calibration, folder.reliability, folder.model_card))
    console.print(f"written to {written}")


@command("evaluate", EvaluateConfig, arguments=(RUN, Arg("eval_dir")), names=OUTPUT_DIR)
def evaluate(config: EvaluateConfig) -> None:
    """Score every split of a run on an evaluation set: metrics as mean ± std, per class, confusion matrix."""
    from ..outputs.evaluation import evaluate_run

    report.print_evaluation(console, run(lambda: evaluate_run(config), "evaluate"))
    if hint := _report_hint(config.run, f"--evaluation {shlex.quote(str(config.output_dir))}"):
        console.print(hint)


@command("predict", PredictConfig, arguments=(RUN, Arg("inputs")), names={**OUTPUT, "n": ("--n", "-n")})
def predict(config: PredictConfig) -> None:
    """Label new images with top-k classes (and Grad-CAM figures); an ensemble with --split all."""
    from ..modelling.processes import main_process
    from ..outputs.prediction import predict as run_predict

    result = run(lambda: run_predict(config), "predict")
    if main_process():  # under torchrun, rank 0 speaks for all
        report.print_prediction(console, result)


@command("enrich", EnrichConfig, arguments=(RUN, Arg("inputs")), names={**OUTPUT, "n": ("--n", "-n")})
def enrich(config: EnrichConfig) -> None:
    """Precision-targeted labels as W3C Web Annotations (Europeana's shape); the doubtful ones to review."""
    from ..modelling.processes import main_process
    from ..outputs.enrichment import enrich as run_enrich

    result = run(lambda: run_enrich(config), "enrich")
    if main_process():
        report.print_enrichment(console, result)


@command("export", ExportConfig, arguments=(RUN,), names=OUTPUT)
def export(config: ExportConfig) -> None:
    """A run's models as ONNX files (preprocessing and temperature inside) for ONNX Runtime, and a sidecar."""
    from ..outputs.export import export as run_export

    report.print_export(console, run(lambda: run_export(config), "export"))


@command("embed", EmbedConfig, arguments=(Arg("data_dir"),), names=OUTPUT)
def embed(config: EmbedConfig) -> None:
    """One vector per image from a frozen pretrained backbone, for linear probes, k-NN and eic audit."""
    from ..modelling.embedding import embed as run_embed

    report.print_embedding(console, run(lambda: run_embed(config), "embed"))


@command("audit", AuditConfig, arguments=(Arg("source", metavar="RUN_OR_EMB"),), names=OUTPUT_DIR)
def audit(config: AuditConfig) -> None:
    """Likely mislabelled images (cleanlab) and near-duplicates across folds, labels and providers."""
    from ..outputs.audit import audit as run_audit

    report.print_audit(console, run(lambda: run_audit(config), "audit"))


def _report_hint(run_dir: Path, options: str = "") -> str:
    """The line train and evaluate end with: where the run's HTML page would be, and the command that makes it (a
    split folder evaluated alone is no run: it has no page)."""
    from ..modelling.run_folder import RunFolder

    if RunFolder(run_dir).is_split:
        return ""
    command = " ".join(["eic report", shlex.quote(str(run_dir)), options]).strip()
    return f"a page of it, images and all: {report.plain(command)} (writes {report.plain(RunFolder(run_dir).report)})"


@command("report", ReportConfig, arguments=(RUN,), names=OUTPUT)
def html_report(config: ReportConfig) -> None:
    """One self-contained HTML page of a run (opens offline): summary, per class, confusion, galleries,
    calibration, audit, curves."""
    from ..outputs.report import report as run_report

    result = run(lambda: run_report(config), "report")
    console.print(
        f"report written to {report.plain(result.output)} ({result.size / 2**20:.1f} MB, {result.images} images; "
        f"sections: {', '.join(result.sections)})"
    )
    for note in result.notes:
        console.print(f"[dim]not included:[/] {report.plain(note)}")


@command("import", ReviewImportConfig, arguments=(Arg("export"),), names=OUTPUT, target=review_app)
def review_import(config: ReviewImportConfig) -> None:
    """Turn people's corrections (a Label Studio JSON export) into a table download and train accept."""
    from ..outputs.review import import_review

    report.print_review_import(console, run(lambda: import_review(config), "import"))


@command("apply", ReviewApplyConfig, arguments=(Arg("table"), Arg("reviewed")), names=OUTPUT, target=review_app)
def review_apply(config: ReviewApplyConfig) -> None:
    """Put the reviewed labels into a training table, by record ID (then eic download it into the same folder)."""
    from ..outputs.review_apply import apply_review

    report.print_review_apply(console, run(lambda: apply_review(config), "apply"))


TOKEN = {"annotation_token": ("--token", "--annotation-token")}


@command("publish", PublishConfig, arguments=(Arg("enrichments"),), names=TOKEN)
def publish(config: PublishConfig) -> None:
    """Send eic enrich's annotations to Europeana's Annotations API, each once (re-runs send only what is new)."""
    from ..outputs.publish import publish as run_publish

    report.print_publish(console, run(lambda: run_publish(config), "publish"))


@command("withdraw", WithdrawConfig, arguments=(Arg("published"),), names=TOKEN)
def withdraw(config: WithdrawConfig) -> None:
    """Delete from Europeana every annotation a model published (from the journals of eic publish; without files,
    found on the Annotations API by the model's generator)."""
    from ..outputs.publish import withdraw as run_withdraw

    result = run(lambda: run_withdraw(config), "withdraw")
    report.print_withdraw(console, result)
    refused = report.withdraw_refusals(result)
    if refused is not None:
        typer.echo(f"eic: error: {refused}", err=True)
        raise typer.Exit(1)


@command("demo", DemoConfig, names=OUTPUT_DIR)
def demo(config: DemoConfig) -> None:
    """Run harvest, subtract, download, train, evaluate, predict and enrich offline against the built-in
    sandbox."""
    from .demo import demo as run_demo

    again = f"delete {config.output_dir} to run the demo again, or give another --output-dir"
    result = run(lambda: run_demo(config, console), "demo", interrupted=again)
    total = sum(seconds for _, _, seconds in result.stages)
    console.rule("[bold]done")
    console.print(
        f"the whole pipeline ran offline in {total:.0f} s; everything is in {report.plain(result.output_dir)}"
    )


@command("sandbox", SandboxConfig)
def sandbox(config: SandboxConfig) -> None:
    """Serve a local stand-in of the Search API, the Thumbnail API and an image host until Ctrl-C."""
    from ..europeana.sandbox import Knobs, Sandbox

    # Images that need care (CMYK, rotated, large...) come with the deliberately bad answers.
    knobs = Knobs(variant_every=7 if config.bad_every else 0)

    def start() -> Sandbox:
        try:
            return Sandbox(config, knobs)
        except OSError as exc:  # the port is taken, or not ours to take
            raise EicError(f"cannot listen on 127.0.0.1:{config.port} ({exc.strerror}); try `port` 0") from None

    server = run(start, "sandbox")
    report.print_sandbox(console, server)
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def main() -> NoReturn:
    """The ``eic`` entry point: the command on ``sys.argv``, then a quick exit (``leave``). To run eic's commands
    inside another Python program, call ``command_line()``, which ends in ``SystemExit`` instead."""
    try:
        command_line()
    except SystemExit as done:
        code = done.code
    else:
        code = 0
    # Outside the except block: the failed command's frames (and what they hold, a DataLoader's workers) are
    # freed before the exit handlers run, as Python's own exit frees them.
    leave(code)


def command_line() -> None:
    """eic's commands on ``sys.argv``, as ``eic`` runs them, ending in ``SystemExit`` as click's commands do."""
    # The library speaks through logging; the command shows it on stderr.
    from rich.logging import RichHandler

    # Training's line per epoch is INFO (the library logs it only when not quiet); warnings always show.
    handler = RichHandler(
        console=Console(stderr=True), show_time=False, show_path=False, markup=False, show_level=False
    )
    logging.getLogger("europeana_imgcls").addHandler(handler)
    logging.getLogger("europeana_imgcls").setLevel(logging.INFO)
    app()


def leave(code: object) -> NoReturn:
    """Exit as Python would, less its last step: the threads that are not daemons joined (a thread pool's after
    its queued work), the exit handlers run (logging's flush, multiprocessing's children), Python's and the C
    library's standard streams flushed; then the operating system, not the interpreter, tears the process down.
    With torch loaded that teardown unregisters its operators one by one: 0.5 s of a core with torch alone, up
    to 2 s once training or a runtime has loaded torch._dynamo, matplotlib or ONNX Runtime, after the command's
    work is done (``benchmarks/exit.py``). By then every file eic wrote is closed, or was written to a temporary
    file and renamed. Python's full exit is kept where a tracer or profiler is attached (coverage, cProfile: they
    write what they saw as the program ends), with ``EIC_FULL_EXIT`` set (to anything but 0 or false), and for an
    exit code that is not a number."""
    shutdown = getattr(threading, "_shutdown", None)
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if not (isinstance(code, int | None) and shutdown and run_handlers) or _full_exit_asked():
        raise SystemExit(code)
    status = code or 0
    try:
        shutdown()
    except KeyboardInterrupt:  # Ctrl-C while a thread finishes: the rest of the exit still runs
        status = status or 130
    run_handlers()
    end_process(status)


def end_process(status: int) -> NoReturn:
    """The process's last step once its exit handlers have run: Python's and the C library's standard streams
    flushed, then ``os._exit`` (``leave``'s end, and the test suite's workers')."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed pipe (eic ... | head): Python's own exit says 120
            status = status or 120
    with contextlib.suppress(Exception):  # what C and C++ code (torch, ONNX Runtime) left in stdio's buffers
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(status)


def _full_exit_asked() -> bool:
    if os.environ.get("EIC_FULL_EXIT", "").strip().lower() not in ("", "0", "false", "no"):
        return True
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12's tools (coverage 7.4 and later use it)
    return monitoring is not None and any(monitoring.get_tool(tool) for tool in range(6))
