"""europeana/thumbnails.py: the Thumbnail API's URLs and its placeholder icons."""

from __future__ import annotations

from europeana_imgcls.europeana.thumbnails import is_placeholder, placeholder_bytes, thumbnail_url

# ---------------------------------------------------------------------------------------------
# Thumbnails


def test_thumbnail_urls_are_the_md5_of_the_media_url_and_placeholders_are_known() -> None:
    # The pair from europeana/thumbnail-api's own tests.
    url = "https://test.europeana.eu/thumbnail.jpg"
    assert (
        thumbnail_url("http://127.0.0.1:9/thumbnail/v3/", url, 128)
        == "http://127.0.0.1:9/thumbnail/v3/200/7463a193a468a1ff1a0c0f7d5933e54b"
    )
    assert thumbnail_url("https://x/thumbnail/v3", url, 224).split("/")[-2] == "400"
    assert thumbnail_url("https://x/thumbnail/v3", url, 0).split("/")[-2] == "400"  # originals asked: largest
    icon = placeholder_bytes()
    assert len(icon) == 2319 and is_placeholder(icon)
    assert not is_placeholder(icon + b"\0") and not is_placeholder(icon[:-1])
