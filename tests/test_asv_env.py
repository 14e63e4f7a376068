"""asv's environments for stagebench: what a per-commit virtualenv sees of its parent."""

from __future__ import annotations

import sys
from pathlib import Path

import plant

from stagebench import overlay, releases
from stagebench.asv_env import site_paths


def test_site_paths_of_an_overlay_reach_the_base_it_is_layered_over(tmp_path):
    """A bisect's virtualenv made from an overlay (the night's image) must see torch, which only
    the overlay's .pth reaches: its own site-packages first, then the base's."""
    wheels = plant.write_wheels(tmp_path / "wheels", ("1.0.0",))
    image = overlay.build(
        ["stagebench-test-plant==1.0.0"],
        source=releases.Source(find_links=wheels),
        overlay_dir=tmp_path / "overlays",
    )
    paths = site_paths(image.python)
    base = site_paths(sys.executable)
    torch_dir = next(p for p in base if (Path(p) / "torch").is_dir())
    assert paths[0].startswith(str(image.path))
    assert torch_dir in paths and paths.index(torch_dir) > 0
    assert all(p.rstrip("/").endswith(("site-packages", "dist-packages")) for p in paths)
