"""Images in order, a batch at a time, as numpy arrays: how a runtime that reads numpy (an exported model run by ONNX
Runtime or OpenVINO) is fed, without loading torch, whose DataLoader feeds PyTorch's models.

A batch is what PyTorch's loader hands over, in numpy: N x 3 x size x size uint8 pixels decoded by ``load_image``
(the same function, the same pixels), the images' targets (an image that cannot be decoded: zeros, its target
marked unreadable, as ``folders.ImageDataset`` marks it) and their indices. Decoding runs in a few threads, a
couple of batches ahead of the model: Pillow lets go of the GIL while it decodes and resizes, so the decoding of the
next batches overlaps the model's pass over this one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

import numpy as np

from .class_folders import DECODE_ERRORS
from .decoding import load_image
from .imageset import UNREADABLE, ImageSet

AHEAD: Final = 2  # batches decoded ahead of the one the model is given


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # pixels (N x 3 x size x size, uint8), targets, indices


def array_batches(images: ImageSet, size: int, batch_size: int, threads: int = 0) -> Iterator[Batch]:
    """``images`` in order, ``batch_size`` at a time, decoded to ``size`` x ``size``; ``threads`` decoding ahead
    (0: each batch decoded in the calling thread when it is asked for)."""
    starts = range(0, len(images), batch_size)
    if threads <= 0:
        for start in starts:
            yield _Pending(images, size, start, batch_size, _now).result()
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="eic-decode")
    try:
        pending: deque[_Pending] = deque()
        for start in starts:
            pending.append(_Pending(images, size, start, batch_size, pool.submit))
            if len(pending) > AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a pass stopped early (an error, a kill) leaves no decoding behind it
        pool.shutdown(wait=True, cancel_futures=True)


def _now(decode: Callable[..., bool], *args: object) -> Future[bool]:
    """``decode`` run here and now, as a finished future (the loader without threads)."""
    done: Future[bool] = Future()
    done.set_result(decode(*args))
    return done


class _Pending:
    """A batch whose images are being decoded, each into its row of the batch's pixels."""

    def __init__(
        self, images: ImageSet, size: int, start: int, batch_size: int, submit: Callable[..., Future[bool]]
    ) -> None:
        self.images, self.index = images, np.arange(start, min(start + batch_size, len(images)))
        self.pixels = np.zeros((len(self.index), 3, size, size), dtype=np.uint8)
        self.decoded = [submit(_decode, images, int(i), size, self.pixels[row]) for row, i in enumerate(self.index)]

    def result(self) -> Batch:
        readable = np.array([done.result() for done in self.decoded], dtype=bool)
        targets = np.array(self.images.labels[self.index], copy=True)
        targets[~readable] = UNREADABLE  # a class index, or every target of a label row
        return self.pixels, targets, self.index


def _decode(images: ImageSet, index: int, size: int, into: np.ndarray) -> bool:
    """Image ``index`` decoded into ``into`` (3 x size x size); whether it could be (else ``into`` stays zeros)."""
    try:
        picture = load_image(images.paths[index], size)
    except DECODE_ERRORS:
        return False
    into[...] = np.asarray(picture, dtype=np.uint8).transpose(2, 0, 1)
    return True
