"""core/naming.py: the naming contract, record ID <-> file name: injective, stable, safe on Linux and Windows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from europeana_imgcls.acquisition.download import file_name

from ..support import examples

# ---------------------------------------------------------------------------------------------
# Rule 7: names and races


IDS = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=80),
    # IDs made of the encoding's own pieces, where a collision would hide
    st.lists(
        st.sampled_from(["/", "[", "]", "ph", "lb", "x2e", "[ph]", "\\", ".", "a", "CON", ":"]), min_size=1, max_size=12
    ).map("".join),
)
WINDOWS_FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)}


@given(st.lists(IDS, min_size=2, max_size=2, unique=True))
@settings(max_examples=examples(400), deadline=None)
def test_file_names_are_injective(pair: list[str]) -> None:
    assert file_name(pair[0]) != file_name(pair[1])


@given(IDS)
@settings(max_examples=examples(400), deadline=None)
def test_file_names_are_safe_on_linux_and_windows_and_read_back(record_id: str) -> None:
    from europeana_imgcls.core.naming import record_id_of

    name = file_name(record_id)
    assert name == file_name(record_id)  # stable
    assert not set(name) & WINDOWS_FORBIDDEN and not name.startswith(".")
    assert len(name.encode("utf-8")) <= 200 and name.endswith(".jpg")
    assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
    if record_id.startswith("/") and not name.startswith("[h]"):
        assert record_id_of(name) == record_id


def test_the_examples_of_the_issue() -> None:
    assert file_name("/1/a/b") != file_name("/1/a[ph]b")
    assert file_name("/2058612/object_CHB_61df") == "[ph]2058612[ph]object_CHB_61df.jpg"  # the pilot's names
    assert file_name("CON") != "CON.jpg" and file_name("a:b") == "a[x3a]b.jpg" and not file_name(".x").startswith(".")
