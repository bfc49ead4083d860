"""A deterministic image embedding that needs no downloaded weights, and a perceptual hash.

The embedding concatenates L2-normalised blocks computed on a 64x64 area-averaged thumbnail:
a 4x4x4 colour histogram (64), the 8x8 low-frequency DCT of the gray 32x32 thumbnail without
its DC term (63), an 8-bin gradient-orientation histogram weighted by magnitude (8) and the
channel means and deviations (6); blocks are weighted equally and the result is L2-normalised.
Other embeddings (a model of your own) can replace it: see ``embedding_provider`` in the configuration.
"""

from __future__ import annotations

import cv2
import numpy as np

from qm_dagster.metrics.view import ImageView

DIM = 64 + 63 + 8 + 6
THUMB = 64
THUMB_VERSION = "3"  # bump when ``thumbnail`` or what is made from it changes values (3: crops)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def thumbnail(bgr: np.ndarray, size: int = THUMB) -> np.ndarray:
    """The ``size`` x ``size`` area average of a BGR image (OpenCV's INTER_AREA where a side is
    shorter than ``size``): what the embedding, the hash and the stored thumbnail start from."""
    if bgr.shape[0] < size or bgr.shape[1] < size:
        return cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
    from qm_dagster.metrics.kernels import area_shrink  # compiled code: pixel workers only

    return area_shrink(np.ascontiguousarray(bgr), size, size)


def _dct_gray(bgr_thumb: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(
        cv2.resize(bgr_thumb, (32, 32), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
    )
    return cv2.dct(gray.astype(np.float32))[:8, :8]


def embed_bgr(bgr: np.ndarray) -> np.ndarray:
    """The embedding (float32, length ``DIM``, unit norm) of a BGR image or crop."""
    if bgr.size == 0:
        return np.zeros(DIM, np.float32)
    return embed_thumbnail(thumbnail(bgr))


def embed_thumbnail(thumb: np.ndarray) -> np.ndarray:
    """``embed_bgr`` from the image's ``thumbnail`` (the pass makes it once for the embedding,
    the hash and the stored thumbnail: a third of an image's non-decode time)."""
    color = cv2.calcHist([thumb], [0, 1, 2], None, [4, 4, 4], [0, 256, 0, 256, 0, 256]).ravel()
    dct = _dct_gray(thumb).ravel()[1:]
    gray = cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    magnitude, angle = cv2.cartToPolar(gx, gy)
    bins = np.minimum((angle.ravel() % np.pi) / np.pi * 8, 7).astype(int)
    orient = np.bincount(bins, weights=magnitude.ravel(), minlength=8)
    mean, std = cv2.meanStdDev(thumb)
    stats = np.concatenate([mean.ravel(), std.ravel()]) / 255.0
    blocks = [_unit(np.asarray(b, np.float64)) for b in (color, dct, orient, stats)]
    return _unit(np.concatenate(blocks)).astype(np.float32)


def embed(view: ImageView) -> np.ndarray:
    return embed_bgr(view.bgr)


CROP_WORDS = 256  # crop hashes kept per image: every (top, bottom) x (left, right) margin pair


def gray_thumb(thumb: np.ndarray) -> np.ndarray:
    """The gray plane of an image's ``thumbnail``: what its crop hashes are made from."""
    return cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY)


def crop_words(grays: np.ndarray, threads: int = 0) -> list[bytes]:
    """Each gray thumbnail's ``CROP_WORDS`` crop hashes (``neighbours.crop_hash_words``: the
    first uncropped) as 2 KB, little-endian: kept with the embedding, so that duplicates
    compares them without recomputing them (``threads``: 0 = a thread per core)."""
    from qm_dagster.neighbours import crop_hash_words

    words = crop_hash_words(grays, threads=threads).astype("<u8")
    return [row.tobytes() for row in words]


def words_array(values: list[bytes]) -> np.ndarray:
    """``crop_words`` values back as one ``n x CROP_WORDS`` uint64 array."""
    raw = np.frombuffer(b"".join(values), "<u8")
    return raw.reshape(len(values), CROP_WORDS).astype(np.uint64)


def _hash_bits(gray: np.ndarray) -> np.ndarray:
    dct = cv2.dct(cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32))
    low = dct[:8, :8].ravel()
    return low > np.median(low[1:])


CROP_MARGINS = (0, 2, 4, 6)  # thumbnail pixels cut per side: 0 to 9% of the image


def phash(bgr: np.ndarray) -> int:
    """64-bit perceptual hash: signs of the 8x8 low-frequency DCT of the 32x32 gray thumbnail
    against its median (DC excluded from the median), as a signed int64."""
    return phash_thumbnail(thumbnail(bgr))


def phash_thumbnail(thumb: np.ndarray) -> int:
    """``phash`` from the image's ``thumbnail``."""
    dct = _dct_gray(thumb).ravel()
    bits = dct > np.median(dct[1:])
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value
