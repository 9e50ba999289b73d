import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from geoloc.data.cities import CitiesError, cities_of_batch, load_cities, nearest_cities


def test_repo_city_list():
    cities = load_cities(ROOT / "data/cities.csv")
    assert len(cities) == 50
    assert cities["city"].is_unique
    assert sorted(cities["batch"].unique()) == [f"batch{i:02d}" for i in range(1, 11)]
    assert (cities.groupby("batch").size() == 5).all()
    # metropolitan France and Corsica
    assert cities["lat"].between(41.3, 51.2).all()
    assert cities["lon"].between(-5.2, 9.6).all()
    assert len(cities_of_batch(cities, "batch03")) == 5


@pytest.mark.parametrize(("text", "message"), [
    ("city,lat,lon,radius_km\nParis,48.8,2.3,5\n", "cities.csv:1: header must be"),
    ("city,lat,lon,radius_km,batch\nParis,48.8,2.3,5,batch01\nLyon,north,4.8,5,batch01\n",
     "cities.csv:3: lat 'north' is not a number"),
    ("city,lat,lon,radius_km,batch\nParis,98.8,2.3,5,batch01\n", "cities.csv:2: lat 98.8"),
    ("city,lat,lon,radius_km,batch\nParis,48.8,2.3,5\n", "cities.csv:2: expected 5 fields"),
    ("city,lat,lon,radius_km,batch\nParis,48.8,2.3,5,cap ferret\n",
     "cities.csv:2: batch 'cap ferret': a batch name is letters, digits, '_' and '-'"),
    ("city,lat,lon,radius_km,batch\nParis,48.8,2.3,5,../raw\n", "cities.csv:2: batch '../raw'"),
    ("city,lat,lon,radius_km,batch\nParis,48.8,2.3,5,batch01\nParis,48.8,2.3,5,batch02\n",
     "cities.csv:3: city 'Paris' already on line 2"),
])
def test_malformed_file_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "cities.csv"
    path.write_text(text)
    with pytest.raises(CitiesError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_cities(path)


def test_any_name_of_letters_digits_underscore_and_dash_is_a_batch(tmp_path):
    path = tmp_path / "cities.csv"
    path.write_text("city,lat,lon,radius_km,batch\nLege-Cap-Ferret,44.79,-1.15,20,capferret\n"
                    "Arcachon,44.66,-1.17,5,bassin_2-b\n")
    assert list(load_cities(path)["batch"]) == ["capferret", "bassin_2-b"]


def test_a_city_without_a_radius_takes_every_photo_nearer_it_than_the_others(tmp_path):
    """A batch over a country: no circles, each photo to its nearest city of the batch, 400 km
    away or more; only the local source takes such a city."""
    from geoloc.data.cities import require_circles

    path = tmp_path / "cities.csv"
    path.write_text("city,lat,lon,radius_km,batch\nBrest,48.39,-4.49,,france\n"
                    "Nice,43.70,7.27,,france\nLyon,45.76,4.84,10,lyon\n")
    cities = load_cities(path)
    france = cities_of_batch(cities, "france")
    assert np.isinf(france["radius_km"]).all()
    # Paris (500 km from Brest), Toulouse (480 km from Nice), Bastia
    assert nearest_cities([48.85, 43.60, 42.70], [2.35, 1.44, 9.45], france) == [
        "Brest", "Nice", "Nice"]
    require_circles(cities_of_batch(cities, "lyon"), "mapillary")
    with pytest.raises(CitiesError, match="fetch.source synthetic needs each city's radius_km, "
                                          "the circle it fetches: Brest, Nice has none"):
        require_circles(france, "synthetic")


def test_unknown_batch():
    cities = load_cities(ROOT / "data/cities.csv")
    with pytest.raises(CitiesError, match="batch 'batch99' has no cities"):
        cities_of_batch(cities, "batch99")


def test_nearest_city_whose_circle_holds_the_point():
    cities = pd.DataFrame({"city": ["A", "B"], "lat": [45.0, 45.0], "lon": [5.0, 5.02],
                           "radius_km": [2.0, 0.5]})
    # 1.2 km east of A is 0.4 km from B's centre: B is nearer and holds it.
    assert nearest_cities([45.0, 45.0, 45.0, 46.0], [5.0, 5.0153, 4.99, 5.0], cities) == [
        "A", "B", "A", None]
    assert nearest_cities([], [], cities) == []


def test_a_snapshots_cities_are_where_their_photos_were_taken():
    """Each city at the mean position of its photos, by name; photos without a city count
    for none."""
    from geoloc.data.cities import city_points, nearest_city

    photos = pd.DataFrame({"city": ["Lyon", "Brest", "Lyon", None],
                           "lat": [45.70, 48.39, 45.80, 0.0], "lon": [4.80, -4.49, 4.90, 0.0]})
    cities = city_points(photos)
    assert [c["name"] for c in cities] == ["Brest", "Lyon"]
    assert (cities[0]["lat"], cities[0]["lon"]) == (48.39, -4.49)
    assert cities[1]["lat"] == pytest.approx(45.75, abs=1e-3)
    assert cities[1]["lon"] == pytest.approx(4.85, abs=1e-3)
    name, km = nearest_city(cities, 45.75, 4.95)
    assert name == "Lyon" and km == pytest.approx(7.8, abs=0.1)
    assert nearest_city(cities, 48.0, -4.0)[0] == "Brest"
    assert city_points(photos.iloc[3:]) == [] and nearest_city([], 45.0, 4.0) is None
