"""Thumbnail work (greyscale check, letterbox, JPEG) in threads, handed over in batches."""

from __future__ import annotations

import asyncio

import numpy as np

from vglpipe.errors import InputError
from vglpipe.store.photos import (
    PHOTO_HEIGHT,
    PHOTO_WIDTH,
    decode_jpeg,
    encode_jpeg,
    is_greyscale,
    jpeg_size,
    letterbox,
)

def process_thumbnail(data: bytes, quality: int, what: str) -> tuple[bool, bytes | None]:
    """Greyscale check, letterbox to 640×480, JPEG. Returns ``(is_grey, jpeg)``.

    A thumbnail that already is a 640×480 colour JPEG is stored as served (no re-encoding);
    its greyscale check runs on a 1/8-scale decode (block averages, no inverse DCT).
    """
    import cv2

    if jpeg_size(data) == (PHOTO_WIDTH, PHOTO_HEIGHT):
        if data.rstrip(b"\0")[-2:] != b"\xff\xd9":
            raise InputError(f"{what}: not a complete JPEG ({len(data)} bytes)")
        small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8)
        if small is None:
            raise InputError(f"{what}: cannot decode image ({len(data)} bytes)")
        return (True, None) if is_greyscale(small, step=1) else (False, data)
    img = decode_jpeg(data, what)
    if is_greyscale(img):
        return True, None
    return False, encode_jpeg(letterbox(img), quality)


def process_batch(items: list, quality: int) -> list:
    """Worker side: ``(is_grey, jpeg | None | True)`` per item, True meaning "store as served",
    or the InputError of an undecodable one."""
    out = []
    for data, what in items:
        try:
            grey, jpeg = process_thumbnail(data, quality, what)
            out.append((grey, True if jpeg is data else jpeg))
        except InputError as exc:
            out.append(exc)
    return out


class ImageBatcher:
    """Hand thumbnails to the image worker threads in batches: one hand-off (and GIL round
    trip) per batch instead of per image, which dominated at ~800 small images/s."""

    def __init__(self, pool, workers: int, quality: int, max_batch: int = 32):
        self.pool, self.quality, self.max_batch = pool, quality, max_batch
        self.slots = asyncio.Semaphore(workers)
        self.pending: list[tuple[bytes, str, asyncio.Future]] = []
        self.kick: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    async def process(self, data: bytes, what: str):
        if self.task is None:
            self.kick = asyncio.Event()
            self.task = asyncio.create_task(self._dispatch())
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((data, what, fut))
        self.kick.set()
        result = await fut
        if isinstance(result, InputError):
            raise result
        grey, jpeg = result
        return grey, (data if jpeg is True else jpeg)

    async def _dispatch(self):
        loop = asyncio.get_running_loop()
        while True:
            await self.kick.wait()
            self.kick.clear()
            while self.pending:
                await self.slots.acquire()
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                loop.create_task(self._run(loop, batch))

    async def _run(self, loop, batch):
        try:
            results = await loop.run_in_executor(self.pool, process_batch, [(d, w) for d, w, _ in batch], self.quality)
        except BaseException as exc:  # the pool is shutting down, or a bug: fail the waiting images
            results = [exc] * len(batch)
        finally:
            self.slots.release()
        for (_, _, fut), res in zip(batch, results):
            if not fut.done():
                if isinstance(res, BaseException) and not isinstance(res, InputError):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def close(self):
        if self.task is not None:
            self.task.cancel()

