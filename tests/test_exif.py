"""EXIF tags as a camera writes them and as the project reads them back."""

import io

import pytest
from PIL import Image
from PIL.ExifTags import IFD, Base

from geoloc.exif import capture_time, gps_position, photo_time, written_exif


def saved(exif: Image.Exif) -> Image.Image:
    data = io.BytesIO()
    Image.new("RGB", (8, 8)).save(data, format="JPEG", exif=exif)
    return Image.open(io.BytesIO(data.getvalue()))


@pytest.mark.parametrize("lat, lon", [(44.6812345, -1.2412345), (-33.4489, 151.2093)])
def test_written_tags_read_back(lat, lon):
    when = 1_620_000_123_456
    photo = saved(written_exif(lat, lon, when))
    assert gps_position(photo.getexif().get_ifd(IFD.GPSInfo)) == pytest.approx((lat, lon),
                                                                                abs=1e-7)
    assert photo_time(photo) == when


def test_a_capture_time_has_its_fraction_of_a_second_and_its_offset():
    details = {Base.DateTimeOriginal: "2021:05:01 12:30:00", Base.SubsecTimeOriginal: "25",
               Base.OffsetTimeOriginal: "+02:00"}
    assert capture_time(details) == 1_619_865_000_250
    assert capture_time({**details, Base.SubsecTimeOriginal: "x"}) == 1_619_865_000_000
    assert capture_time({Base.DateTimeOriginal: "0000:00:00 00:00:00"}) is None
