"""Just enough of the Mapbox Vector Tile format (spec 2.1) to read Mapillary's coverage tiles:
point features with their properties, and the Web Mercator tile arithmetic around them.

A tile is a protobuf message; rather than pull in a protobuf toolchain for four message types,
this reads the wire format directly (varints and length-delimited fields).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

# Field numbers of vector_tile.proto.
TILE_LAYERS = 3
LAYER_NAME, LAYER_FEATURES, LAYER_KEYS, LAYER_VALUES, LAYER_EXTENT = 1, 2, 3, 4, 5
FEATURE_ID, FEATURE_TAGS, FEATURE_GEOMETRY = 1, 2, 4
MOVE_TO = 1


@dataclass(frozen=True)
class PointFeature:
    id: int
    lon: float
    lat: float
    properties: dict


def decode_points(data: bytes, layer_name: str, z: int, x: int, y: int) -> list[PointFeature]:
    """The point features of one layer of tile z/x/y, with positions in degrees."""
    features = []
    for layer in _repeated(data, TILE_LAYERS):
        fields = _fields(layer)
        if _text(fields.get(LAYER_NAME, [b""])[0]) != layer_name:
            continue
        extent = fields.get(LAYER_EXTENT, [4096])[0]
        keys = [_text(k) for k in fields.get(LAYER_KEYS, [])]
        values = [_value(v) for v in fields.get(LAYER_VALUES, [])]
        for feature in fields.get(LAYER_FEATURES, []):
            f = _fields(feature)
            tags = _packed(f.get(FEATURE_TAGS, []))
            properties = {keys[k]: values[v] for k, v in zip(tags[::2], tags[1::2], strict=True)}
            for px, py in _points(_packed(f.get(FEATURE_GEOMETRY, []))):
                lon, lat = tile_to_lonlat(z, x + px / extent, y + py / extent)
                features.append(PointFeature(f.get(FEATURE_ID, [0])[0], lon, lat, properties))
    return features


def lonlat_to_tile(lon: float, lat: float, z: int) -> tuple[float, float]:
    """Fractional XYZ tile coordinates of a point (the slippy-map formula)."""
    n = 2**z
    lat = max(min(lat, 85.05112878), -85.05112878)
    x = (lon + 180.0) / 360.0 * n
    y = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return x, y


def tile_to_lonlat(z: int, x: float, y: float) -> tuple[float, float]:
    n = 2**z
    lon = x / n * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))
    return lon, lat


def tiles_over(west: float, south: float, east: float, north: float,
               z: int) -> list[tuple[int, int]]:
    """The z tiles that cover a lon/lat rectangle."""
    x0, y0 = lonlat_to_tile(west, north, z)
    x1, y1 = lonlat_to_tile(east, south, z)
    return [(x, y) for x in range(int(x0), int(x1) + 1) for y in range(int(y0), int(y1) + 1)]


# ------------------------------------------------------------------------------ wire format

def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _fields(data: bytes) -> dict[int, list]:
    """field number -> values in order: ints for varints, bytes for the other wire types."""
    fields: dict[int, list] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _repeated(data: bytes, number: int) -> list[bytes]:
    return _fields(data).get(number, [])


def _packed(chunks: list) -> list[int]:
    values = []
    for chunk in chunks:
        if isinstance(chunk, int):  # an unpacked repeated varint
            values.append(chunk)
            continue
        i = 0
        while i < len(chunk):
            value, i = _varint(chunk, i)
            values.append(value)
    return values


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _points(geometry: list[int]) -> list[tuple[int, int]]:
    """Tile-local positions of the MoveTo commands (a point feature has nothing else)."""
    points, cx, cy, i = [], 0, 0, 0
    while i < len(geometry):
        command, count = geometry[i] & 7, geometry[i] >> 3
        i += 1
        if command == 7:  # ClosePath takes no parameters
            continue
        for _ in range(count):
            cx += _zigzag(geometry[i])
            cy += _zigzag(geometry[i + 1])
            i += 2
            if command == MOVE_TO:
                points.append((cx, cy))
    return points


def _text(raw: bytes) -> str:
    return raw.decode("utf-8")


def _value(raw: bytes):
    """A Value message: exactly one of string, float, double, int, uint, sint or bool."""
    (number, (value,)), = _fields(raw).items()
    if number == 1:
        return _text(value)
    if number == 2:
        return struct.unpack("<f", value)[0]
    if number == 3:
        return struct.unpack("<d", value)[0]
    if number == 4:  # int64: two's complement in a 64-bit varint
        return value - (1 << 64) if value >= 1 << 63 else value
    if number == 6:
        return _zigzag(value)
    if number == 7:
        return bool(value)
    return value
