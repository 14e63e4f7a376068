"""Make an `asv publish` site work without internet access.

asv's pages load jQuery, flot, bootstrap and friends from public CDNs; on a GPU cluster behind a
firewall, in CI, or from a file share the page then shows only asv's "failed to load" notice.
`localize` serves the same library versions from the site itself: it fetches them from the npm
registry once (cached), copies them to `<html>/vendor/`, and points every page at those copies.

Standard library only, so `nox -s publish` can run it as a script without installing stagebench:
    python src/stagebench/site.py HTML_DIR [--cache DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

# CDN address (as asv 0.6 writes it) -> (npm package, file inside it). Same versions as asv uses,
# except stupidtable: npm has only 1.1.3 of that table-sorting plugin, a compatible release.
VENDORED: dict[str, tuple[str, str]] = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery@3.3.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": (
        "flot@0.8.3",
        "jquery.flot.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": (
        "flot@0.8.3",
        "jquery.flot.time.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js": (
        "flot@0.8.3",
        "jquery.flot.selection.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js": (
        "flot@0.8.3",
        "jquery.flot.categories.js",
    ),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js": (
        "flot-orderbars@1.0.0",
        "js/jquery.flot.orderBars.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js": (
        "stupid-table-plugin@1.1.3",
        "stupidtable.min.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": (
        "blueimp-md5@2.19.0",
        "js/md5.min.js",
    ),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": (
        "bootstrap@3.1.1",
        "dist/js/bootstrap.min.js",
    ),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css": (
        "bootstrap@3.1.1",
        "dist/css/bootstrap.min.css",
    ),
}
# Subresource-integrity and CORS attributes only make sense for the CDN copies.
_CDN_ATTRS = re.compile(r'\s+(?:integrity|crossorigin|referrerpolicy)="[^"]*"')


class SiteError(RuntimeError):
    """What stopped the site from being made self-contained."""


def package_dir(cache: Path, spec: str) -> Path:
    return cache / "node_modules" / spec.rsplit("@", 1)[0]


def fetch(cache: Path) -> None:
    """npm-install the libraries into `cache` unless every file is already there."""
    missing = sorted(
        {
            spec
            for spec, path in VENDORED.values()
            if not (package_dir(cache, spec) / path).is_file()
        }
    )
    if not missing:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SiteError("npm not found: it fetches the site's JavaScript libraries once")
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(cache), *missing],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SiteError(f"npm install failed: {done.stderr.strip().splitlines()[-1:]}")


def vendor_name(url: str) -> str:
    spec, path = VENDORED[url]
    return f"{spec.rsplit('@', 1)[0]}-{Path(path).name}"


def localize(html_dir: Path, cache: Path) -> int:
    """Copy the libraries into `html_dir/vendor` and rewrite every page; returns pages changed."""
    if not (html_dir / "index.html").is_file():
        raise SiteError(f"{html_dir} holds no published site (run asv publish first)")
    fetch(cache)
    vendor = html_dir / "vendor"
    vendor.mkdir(exist_ok=True)
    for url, (spec, path) in VENDORED.items():
        shutil.copyfile(package_dir(cache, spec) / path, vendor / vendor_name(url))
    changed = 0
    for page in html_dir.rglob("*.html"):
        text = original = page.read_text()
        depth = len(page.relative_to(html_dir).parts) - 1
        for url in VENDORED:
            local = "../" * depth + f"vendor/{vendor_name(url)}"
            text = re.sub(
                rf'<(script|link)([^>]*?)(src|href)="{re.escape(url)}"([^>]*)>',
                lambda m, local=local: _CDN_ATTRS.sub("", f'<{m[1]}{m[2]}{m[3]}="{local}"{m[4]}>'),
                text,
            )
        if text != original:
            page.write_text(text)
            changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the directory asv publish wrote")
    parser.add_argument("--cache", type=Path, default=Path(".asv/site-assets"))
    args = parser.parse_args(argv)
    try:
        pages = localize(args.html, args.cache)
    except SiteError as exc:
        print(f"site: error: {exc}", file=sys.stderr)
        return 1
    print(f"site: {pages} page(s) now load their libraries from {args.html / 'vendor'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
