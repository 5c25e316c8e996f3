"""Draws the approver app's PNG icons (192, 512 and a maskable 512) with no image library.

Run: python3 scripts/pwa_icons.py   (writes pwa/icon-192.png, pwa/icon-512.png, pwa/icon-maskable-512.png)
The mark is a white check in a sky-blue ring on the app's slate background; the maskable one keeps the
mark inside the central 80 % "safe zone" and fills the whole square.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

PWA = Path(__file__).resolve().parents[1] / "pwa"
SLATE = (15, 23, 42)
SKY = (2, 132, 199)
WHITE = (255, 255, 255)


def _segment_distance(px: float, py: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def _pixel(x: float, y: float, scale: float, rounded: bool) -> tuple[int, int, int, int]:
    """Colour at (x, y) in a unit square; `scale` shrinks the mark toward the centre."""
    if rounded:  # rounded-corner square, transparent outside
        r = 0.18
        cx, cy = min(max(x, r), 1 - r), min(max(y, r), 1 - r)
        if math.hypot(x - cx, y - cy) > r:
            return (0, 0, 0, 0)
    u, v = (x - 0.5) / scale + 0.5, (y - 0.5) / scale + 0.5
    d = math.hypot(u - 0.5, v - 0.5)
    check = min(_segment_distance(u, v, (0.3, 0.52), (0.44, 0.66)),
                _segment_distance(u, v, (0.44, 0.66), (0.71, 0.36)))
    if check < 0.055:
        return (*WHITE, 255)
    if d < 0.36:
        return (*SKY, 255)
    return (*SLATE, 255)


def png(size: int, *, maskable: bool) -> bytes:
    rows = bytearray()
    for j in range(size):
        rows.append(0)  # filter: none
        for i in range(size):
            rows.extend(_pixel((i + 0.5) / size, (j + 0.5) / size, 0.8 if maskable else 1.0, not maskable))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    pixels = zlib.compress(bytes(rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def main() -> None:
    for name, size, maskable in (("icon-192.png", 192, False), ("icon-512.png", 512, False),
                                 ("icon-maskable-512.png", 512, True)):
        (PWA / name).write_bytes(png(size, maskable=maskable))
        print(f"wrote pwa/{name}")


if __name__ == "__main__":
    main()
