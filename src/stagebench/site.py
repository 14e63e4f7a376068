"""The published site: self-contained, and opening on the nightly matrix.

asv's pages load jQuery, flot, bootstrap and friends from public CDNs; on a GPU cluster behind a
firewall, in CI, or from a file share the page then shows only asv's "failed to load" notice.
`localize` serves the same library versions from the site itself, copied from the files shipped
with stagebench (`site_assets/`, from the npm registry; `--refresh-assets` fetches them again),
and `check_self_contained` proves no page asks a third party for anything. `build` does both and
writes the front page (frontpage.py) in place of asv's grid, which moves to asv.html.

    python -m stagebench.site HTML_DIR [--results DIR] [--baseline COMMIT]
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


ASSETS = Path(__file__).with_name("site_assets")


def refresh_assets(cache: Path) -> None:
    """Fetch the libraries from npm again and replace the shipped copies (maintainers only)."""
    fetch(cache)
    for url, (spec, path) in VENDORED.items():
        shutil.copyfile(package_dir(cache, spec) / path, ASSETS / vendor_name(url))


def localize(html_dir: Path) -> int:
    """Copy the shipped libraries into `html_dir/vendor` and rewrite every page to load them;
    returns the number of pages changed."""
    if not any((html_dir / name).is_file() for name in ("index.html", "asv.html")):
        raise SiteError(f"{html_dir} holds no published site (run asv publish first)")
    vendor = html_dir / "vendor"
    vendor.mkdir(exist_ok=True)
    for url in VENDORED:
        shipped = ASSETS / vendor_name(url)
        if not shipped.is_file():
            raise SiteError(f"{shipped} is missing: reinstall stagebench or --refresh-assets")
        shutil.copyfile(shipped, vendor / vendor_name(url))
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


# What makes a browser fetch something: script/img/iframe src, link href, CSS url() and @import.
_RESOURCE = re.compile(
    r"""<(?:script|img|iframe|source|embed|audio|video)\b[^>]*\bsrc\s*=\s*["']([^"']+)"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']([^"']+)"""
    r"""|url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""",
    re.IGNORECASE,
)


def external_requests(html_dir: Path) -> list[str]:
    """`page: address` for every resource a page or stylesheet would fetch from another host
    (plain links to, say, a commit on GitHub are navigation, not requests)."""
    found = []
    for page in sorted([*html_dir.rglob("*.html"), *html_dir.rglob("*.css")]):
        text = page.read_text(errors="replace")
        for match in _RESOURCE.finditer(text):
            address = next(g for g in match.groups() if g)
            if re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", address, re.IGNORECASE):
                found.append(f"{page.relative_to(html_dir)}: {address}")
    return found


def build(html_dir: Path, results_dir: Path, baseline: str | None = None) -> str:
    """Localize the site, write the front page, and prove no page asks a third party."""
    from stagebench import frontpage

    localize(html_dir)
    rows = frontpage.write(html_dir, results_dir, baseline=baseline)
    outside = external_requests(html_dir)
    if outside:
        raise SiteError(f"pages still request other hosts: {'; '.join(outside[:5])}")
    return f"site: {html_dir / 'index.html'} ({rows} stage rows), self-contained"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stagebench.site", description=__doc__.splitlines()[0]
    )
    parser.add_argument("html", type=Path, help="the directory asv publish wrote")
    parser.add_argument("--results", type=Path, default=Path(".asv/results"))
    parser.add_argument("--baseline", help="commit the 'vs baseline' column compares with")
    parser.add_argument(
        "--refresh-assets", action="store_true", help="fetch the shipped libraries from npm"
    )
    args = parser.parse_args(argv)
    try:
        if args.refresh_assets:
            refresh_assets(Path(".asv/site-assets"))
        print(build(args.html, args.results, args.baseline))
    except SiteError as exc:
        print(f"site: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
