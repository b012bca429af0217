"""Europeana's Thumbnail API: one CDN with a 200 or 400 px rendition of most media, which is all a
128-224 px classifier needs.

v3 names a thumbnail by the MD5 of the media URL (the URL exactly as the record gives it, not
normalised) and answers 404 when it has none. v2 (the ``edmPreview`` links of search results) answers
200 with a generic icon instead: five fixed PNGs (one per media type, whatever the size asked for),
which ``is_placeholder`` recognises by their SHA-256 so that an icon is never kept as a picture.
Facts from github.com/europeana/thumbnail-api (ThumbnailControllerV2/V3, IdUtils, resources/images).
"""

from __future__ import annotations

import functools
import hashlib

SIZES = (200, 400)
# src/main/resources/images/EU_thumbnails_{image,sound,video,text,3d}.png: 293 x 293 palette PNGs of
# 2,319, 2,484, 1,932, 2,180 and 3,012 bytes. The image icon ships in data/ for the sandbox (EUPL-1.2).
PLACEHOLDER_SHA256 = frozenset(
    {
        "9b81b5fee241cee7aba478d1cd20715c1ae2601bcfca8c09e327731dfddf9bf5",  # IMAGE (and unknown types)
        "6b51e5cddf05e0bac0825a3ca19711057b13b628d9006d2599681e7f361cc369",  # SOUND
        "b06d7fd39556f96ec94048f5964efa7d097b1bea72dd5d247a59e5f17825b1e2",  # VIDEO
        "71de9d34f79e47a6d32b9ffe2931ea8d3584ed4c0f5bcb3686a5653564e1827a",  # TEXT
        "61aee4627b657c58cbd63da3caf3df8bac5b1fabbc067ceeeeb3bb1d02b55e28",  # 3D
    }
)
_LARGEST_PLACEHOLDER = 3012


def thumbnail_size(max_side: int) -> int:
    """The rendition to ask for: 200 px when the saved image is no larger, else 400 (the largest)."""
    return 200 if 0 < max_side <= 200 else 400


def thumbnail_url(base: str, media_url: str, max_side: int) -> str:
    """The v3 URL of ``media_url``'s thumbnail under ``base`` (``.../thumbnail/v3``)."""
    return f"{base.rstrip('/')}/{thumbnail_size(max_side)}/{media_digest(media_url)}"


def media_digest(media_url: str) -> str:
    """How the Thumbnail API v3 names a media file's thumbnails: the MD5 of its URL."""
    return hashlib.md5(media_url.encode("utf-8"), usedforsecurity=False).hexdigest()


def shows(url: str, media_url: str | None) -> bool:
    """Whether ``url`` is the media file ``media_url`` or a v3 thumbnail of it (any size, any base)."""
    return bool(media_url) and (url == media_url or url.rsplit("/", 1)[-1] == media_digest(media_url or ""))


def is_placeholder(data: bytes) -> bool:
    """Whether ``data`` is one of the Thumbnail API's "no thumbnail" icons."""
    return len(data) <= _LARGEST_PLACEHOLDER and hashlib.sha256(data).hexdigest() in PLACEHOLDER_SHA256


@functools.cache  # read once: the sandbox sends it for every record without a thumbnail
def placeholder_bytes() -> bytes:
    """The IMAGE icon itself, as v2 sends it (the sandbox serves it for media without a thumbnail)."""
    from importlib.resources import files

    return (files("europeana_imgcls") / "data" / "europeana_placeholder_image.png").read_bytes()
