"""The asset page charts what a credit officer reads utilization from (weight, run-hours per day), draws the map
with no online tiles unless a tile URL is configured, and then only from that origin, and shows each device's key
as the registry has it (its algorithm, where it is kept)."""
from __future__ import annotations

import hashlib
import re

from telemetry.identity import P256Identity
from tests.kit.console import MILL_HOURS, MILL_WEIGHTS, RunningConsole

from .conftest import log_in

TILES = "https://tiles.example/{z}/{x}/{y}.png"


def test_a_machine_page_charts_its_weight_and_its_run_hours_per_day(pledged):
    pledged.machine()
    with RunningConsole(pledged.data_dir) as console:
        client = log_in(console.url, "vera")
        asset = client.get("/api/assets/gw-mill/mill-4").json()
        page = client.get("/assets/gw-mill/mill-4").text
    assert [value for _, value in sorted(asset["series"]["weight"])] == list(MILL_WEIGHTS)
    assert asset["utilization_hours"] == MILL_HOURS          # the newer of two figures for one day counts
    weight = re.search(r'<svg class="chart"[^>]*aria-label="weight">.*?</svg>', page, re.S)
    assert weight and 'class="series"' in weight.group(0) and "last 1150" in weight.group(0)
    bars = re.search(r'<svg class="chart"[^>]*aria-label="run-hours">.*?</svg>', page, re.S)
    assert bars and bars.group(0).count('class="bar"') == len(MILL_HOURS)
    assert "<title>2026-12-04: 7.5 h</title>" in bars.group(0) and "(h per day)" in bars.group(0)
    assert "no geofence enrolled and no GNSS fixes" in page


def test_the_map_loads_no_tiles_unless_a_tile_url_is_configured_and_then_from_its_origin_alone(pledged):
    with RunningConsole(pledged.data_dir) as console:
        plain = log_in(console.url, "vera").get("/assets/gw-cold/cold-store")
    plain_map = the_map(plain.text)
    assert "<image" not in plain_map and 'class="grid"' in plain_map and 'class="fence"' in plain_map
    assert "img-src 'self' data:;" in plain.headers["content-security-policy"]
    with RunningConsole(pledged.data_dir, tiles=TILES) as console:
        tiled = log_in(console.url, "vera").get("/assets/gw-cold/cold-store")
    tiled_map = the_map(tiled.text)
    images = re.findall(r'<image href="([^"]+)"', tiled_map)
    assert images and all(re.fullmatch(r"https://tiles\.example/\d+/\d+/\d+\.png", url) for url in images), images
    assert 'class="fence"' in tiled_map and 'class="grid"' not in tiled_map
    assert "img-src 'self' data: https://tiles.example;" in tiled.headers["content-security-policy"]


def the_map(page: str) -> str:
    drawn = re.search(r'<svg class="map".*?</svg>', page, re.S)
    assert drawn, "no map on the asset page"
    return drawn.group(0)


def test_the_device_panel_shows_the_registered_key_algorithm_and_key_storage(pledged):
    pledged.asset_gateway("gw-tpm", "vault-9", site="Kiel works", borrower="Ostsee Metall AG",
                          identity=P256Identity(hashlib.sha256(b"console es256 gateway").digest()))
    with RunningConsole(pledged.data_dir) as console:
        client = log_in(console.url, "vera")
        es256 = client.get("/api/assets/gw-tpm/vault-9").json()["device_record"]
        eddsa = client.get("/api/assets/gw-cold/cold-store").json()["device_record"]
        pages = {name: client.get(path).text for name, path in (("es256", "/assets/gw-tpm/vault-9"),
                                                                  ("eddsa", "/assets/gw-cold/cold-store"))}
    assert (es256["algorithm"], es256["key_storage"]) == ("ES256", "software")
    assert len(bytes.fromhex(es256["public_key_hex"])) == 65
    assert (eddsa["algorithm"], eddsa["key_storage"]) == ("EdDSA", "software")
    assert '<dd class="key-algorithm">P-256 (ES256), kid ' in pages["es256"] and "Ed25519" not in pages["es256"]
    assert '<dd class="key-algorithm">Ed25519 (EdDSA), kid ' in pages["eddsa"]
    for page in pages.values():
        assert '<dd class="key-storage">software <span class="muted">(a key file on the device' in page
        assert "not declared" not in page
