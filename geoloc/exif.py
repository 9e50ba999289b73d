"""Reading a photo's EXIF tags: GPS position and direction, capture time, plain text. Pillow
parses the tags; these turn its rationals, tuples and padded strings into plain values, or None
when a camera wrote nothing usable."""

from __future__ import annotations

import datetime as dt

import numpy as np
from PIL import Image
from PIL.ExifTags import GPS, IFD, Base

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def photo_time(image: Image.Image) -> int | None:
    """When an opened photo was taken (ms UTC), from its EXIF, or None."""
    return capture_time(image.getexif().get_ifd(IFD.Exif))


def photo_position(image: Image.Image) -> tuple[float, float] | None:
    """Where an opened photo was taken (lat, lon), from its EXIF GPS, or None."""
    return gps_position(image.getexif().get_ifd(IFD.GPSInfo))


def gps_position(gps: dict) -> tuple[float, float] | None:
    lat = _degrees(gps.get(GPS.GPSLatitude), gps.get(GPS.GPSLatitudeRef), "N", "S")
    lon = _degrees(gps.get(GPS.GPSLongitude), gps.get(GPS.GPSLongitudeRef), "E", "W")
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return None
    if lat == 0 and lon == 0:   # what some cameras write before they have a fix
        return None
    return lat, lon


def _degrees(value, ref, positive: str, negative: str) -> float | None:
    """EXIF degrees, minutes, seconds (rationals) and a hemisphere letter -> signed degrees."""
    parts = value if isinstance(value, tuple | list) else (value,)
    numbers = [number(p) for p in parts[:3]]
    if not numbers or any(n is None or n < 0 for n in numbers):
        return None
    sign = {positive: 1.0, negative: -1.0}.get((text(ref) or "").upper())
    if sign is None:   # without its hemisphere a position could be on the wrong continent
        return None
    return sign * sum(n / 60**i for i, n in enumerate(numbers))


def compass(gps: dict) -> float | None:
    angle = number(gps.get(GPS.GPSImgDirection))
    return angle % 360.0 if angle is not None and 0 <= angle <= 360 else None


def capture_time(details: dict) -> int | None:
    """DateTimeOriginal of the Exif folder `details` in ms UTC, with its fraction of a second
    (SubsecTimeOriginal: frames of a burst are not one moment), shifted by OffsetTimeOriginal
    when the camera wrote one."""
    stamp = text(details.get(Base.DateTimeOriginal))
    try:
        when = dt.datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S")
    except (TypeError, ValueError):   # absent, or blanks and zeros from a camera without a clock
        return None
    fraction = text(details.get(Base.SubsecTimeOriginal)) or ""
    millis = int(fraction[:3].ljust(3, "0")) if fraction.isdigit() else 0
    offset = _utc_offset(text(details.get(Base.OffsetTimeOriginal)))
    return ms(when.replace(tzinfo=offset)) + millis


def _utc_offset(offset: str | None) -> dt.tzinfo:
    try:
        return dt.datetime.strptime(offset, "%z").tzinfo
    except (TypeError, ValueError):
        return dt.UTC


def number(value) -> float | None:
    """A finite float from an EXIF number; a rational with a zero denominator reads as NaN."""
    try:
        result = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return result if np.isfinite(result) else None


def text(value) -> str | None:
    """An EXIF ASCII value without its NUL and blank padding; None when absent or empty."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    return value.strip("\x00 \t\r\n") or None


def ms(when: dt.datetime) -> int:
    """ms since 1970 UTC; a time without an offset is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - EPOCH) // dt.timedelta(milliseconds=1)


def written_exif(lat: float, lon: float, when_ms: int) -> Image.Exif:
    """The EXIF tags a phone writes for a photo taken at (lat, lon) at `when_ms` (ms UTC):
    GPS position as degrees, minutes and seconds with hemispheres, and the capture time with
    its milliseconds and offset (UTC)."""
    exif = Image.Exif()
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[GPS.GPSLatitudeRef], gps[GPS.GPSLatitude] = "N" if lat >= 0 else "S", _dms(lat)
    gps[GPS.GPSLongitudeRef], gps[GPS.GPSLongitude] = "E" if lon >= 0 else "W", _dms(lon)
    details = exif.get_ifd(IFD.Exif)
    when = EPOCH + dt.timedelta(milliseconds=when_ms)
    details[Base.DateTimeOriginal] = when.strftime("%Y:%m:%d %H:%M:%S")
    details[Base.SubsecTimeOriginal] = f"{when_ms % 1000:03d}"
    details[Base.OffsetTimeOriginal] = "+00:00"
    return exif


def _dms(degrees: float) -> tuple[float, float, float]:
    """Unsigned degrees, minutes, seconds (to 0.1 mm), as cameras write them."""
    degrees = abs(degrees)
    whole = int(degrees)
    minutes = int((degrees - whole) * 60)
    return float(whole), float(minutes), round((degrees - whole - minutes / 60) * 3600, 6)
