"""Build the example recipes: a git repository and its images per recipe.

Usage: ``python examples/make_recipes.py --recipes-dir DIR [--recipe NAME ...] [--no-images]``

Every directory ``examples/recipes/<recipe>/`` holding a ``recipe.json`` describes one recipe
as data::

    {
      "recipe": "custom-html",
      "files": "files",                      # template tree committed at every version (or a
                                             # list of trees, merged in order)
      "image": {"repository": "ccci/custom-html", "entrypoint": "image/entrypoint.sh"},
      "behaviour": {"health_path": "/"},     # optional: defaults for every version
      "versions": [                          # oldest first
        {"version": "1.0.0+1.0", "image_tag": "1.0", "notes": "release notes text",
         "behaviour": {"health": "missing"},   # optional: this version's own behaviour
         "overlay": "v1.0",                    # optional: a tree copied over the files from
                                               # this version on (overlays add up)
         "append": {"migrations.sql": "migrations/2.sql"}},  # optional: appended to a file
        ...                                                   # from this version on
      ]
    }

A recipe whose ``image`` is ``{"debian": "<name>"}`` runs every version on the image
``examples/images/<name>.json`` describes, made from Debian packages (``examples/images/
debian.py``: mmdebstrap piped into ``docker import``, rebuilt only when its package list or
files change); its versions need no ``image_tag`` and what differs between them is in the
recipe's files (entrypoints and code as Docker configs, as Co-op Cloud recipes ship them).

``behaviour`` is data, not code: the recipe-level defaults updated by the version's own keys
are baked into that version's image as ``/etc/ccci-behaviour`` (``key=value`` lines, sorted),
which the entrypoint reads (see ``examples/images/standin-entrypoint.sh`` for the keys).
Keys and values are checked here (``BEHAVIOUR_KEYS``); a version without behaviour gets no
such file, so its image is the same as before behaviour existed.

For each recipe this script

* rebuilds ``DIR/<recipe>`` from scratch as a git repository with one commit per version
  (the template files, with ``@@RECIPE@@``, ``@@VERSION@@``, ``@@IMAGE@@`` and
  ``@@UPSTREAM@@`` replaced, plus the notes in ``release/<version>``), each tagged with its
  version (annotated tag), on branch ``main``. Authors and dates are fixed, so the commit
  shas are the same on every run;
* imports one image per version, ``<repository>:<image_tag>``, with ``docker import``: a root
  file system made of the static busybox binary (``shutil.which("busybox")``), its applet
  links, the entrypoint script, ``/etc/ccci-version`` (``"<recipe> <version>"``) and the
  version's ``/etc/ccci-behaviour`` (when it has one). The
  image carries ``LABEL ccci.image-hash=<sha256 of its content>``; an image that already
  exists with the same hash is not imported again.

Only argument lists are run (never a shell), each with a timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RECIPES_SRC = HERE / "recipes"
GIT_TIMEOUT_S = 60
DOCKER_TIMEOUT_S = 180
HASH_LABEL = "ccci.image-hash"
GIT_IDENTITY = ("ccci examples", "examples@ccci.invalid")
# Fixed dates: version i is committed at BASE_EPOCH + i days, so shas are reproducible.
BASE_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY_S = 86_400

# Behaviour keys an image may carry, each with the pattern its value must match (values are
# read by a shell with `read -r`, never evaluated, but stay plain anyway).
BEHAVIOUR_KEYS: dict[str, re.Pattern[str]] = {
    "health_path": re.compile(r"/[A-Za-z0-9._/-]*"),  # path served 200 once booted
    "health": re.compile(r"ok|missing"),  # missing: the health path answers 404
    "health_body": re.compile(r"[ -~]{0,200}"),  # printable ASCII
    "data_dir": re.compile(r"(/[A-Za-z0-9._-]+)*"),  # the data volume's mount ("": none)
    "schema": re.compile(r"[0-9]{1,4}"),  # data schema this version migrates to
    "boot_delay_s": re.compile(r"[0-9]{1,2}"),  # seconds of booting before serving
    "write": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"),  # file written into data_dir
    "exit_code": re.compile(r"[0-9]{1,3}"),  # non-zero: exit with it after writing
}


class BuildError(Exception):
    """Something the build needs is missing or failed; the message says what to do."""


@dataclass(frozen=True)
class VersionSpec:
    version: str
    image_tag: str
    notes: str
    behaviour: tuple[tuple[str, str], ...] = ()
    overlay: Path | None = None  # copied over the files from this version on
    append: tuple[tuple[str, Path], ...] = ()  # (file of the tree, text appended to it)

    def behaviour_file(self) -> bytes:
        return "".join(f"{k}={v}\n" for k, v in self.behaviour).encode()


@dataclass(frozen=True)
class RecipeSpec:
    recipe: str
    source: Path
    files: tuple[Path, ...]  # template trees, merged in order
    repository: str  # busybox images: <repository>:<image_tag> per version
    entrypoint: Path | None  # busybox images: the entrypoint script
    versions: tuple[VersionSpec, ...]
    debian_image: str | None = None  # every version runs examples/images/<name>.json

    def image(self, version: VersionSpec) -> str:
        if self.debian_image is not None:
            ref: str = debian_images().load(self.debian_image).ref
            return ref
        return f"{self.repository}:{version.image_tag}"


def debian_images() -> Any:
    """``examples/images/debian.py``, loaded once (it is a script, not a package)."""
    module = sys.modules.get("ccci_debian_images")
    if module is None:
        spec = importlib.util.spec_from_file_location("ccci_debian_images",
                                                      HERE / "images" / "debian.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["ccci_debian_images"] = module
        spec.loader.exec_module(module)
    return module


def _behaviour(raw: Any, where: str) -> dict[str, str]:
    """A checked behaviour mapping: known keys, str or int values matching their pattern."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BuildError(f"{where}: behaviour must be an object of key: value")
    checked: dict[str, str] = {}
    for key, value in raw.items():
        if key not in BEHAVIOUR_KEYS:
            raise BuildError(f"{where}: unknown behaviour key {key!r}; known: "
                             f"{', '.join(sorted(BEHAVIOUR_KEYS))}")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise BuildError(f"{where}: behaviour {key!r} must be a string or an integer")
        text = str(value)
        if not BEHAVIOUR_KEYS[key].fullmatch(text):
            raise BuildError(f"{where}: behaviour {key}={text!r} does not match "
                             f"{BEHAVIOUR_KEYS[key].pattern}")
        checked[key] = text
    return checked


def _version(raw: dict[str, Any], defaults: dict[str, str], where: str,
             source: Path) -> VersionSpec:
    behaviour = {**defaults, **_behaviour(raw.get("behaviour"), f"{where} {raw['version']}")}
    if behaviour.get("write") and not behaviour.get("data_dir"):
        raise BuildError(f"{where} {raw['version']}: behaviour 'write' needs a 'data_dir'")
    overlay = (source / str(raw["overlay"])).resolve() if raw.get("overlay") else None
    append = tuple((str(target), (source / str(text)).resolve())
                   for target, text in (raw.get("append") or {}).items())
    return VersionSpec(str(raw["version"]), str(raw.get("image_tag", "")),
                       str(raw.get("notes", "")), tuple(sorted(behaviour.items())), overlay,
                       append)


def load_spec(source: Path) -> RecipeSpec:
    """Read and check ``<source>/recipe.json``."""
    path = source / "recipe.json"
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        image = raw["image"]
        defaults = _behaviour(raw.get("behaviour"), str(path))
        versions = tuple(_version(v, defaults, str(path), source) for v in raw["versions"])
        trees = raw.get("files", "files")
        debian = image.get("debian")
        spec = RecipeSpec(
            recipe=str(raw.get("recipe", source.name)),
            source=source,
            files=tuple((source / str(t)).resolve()
                        for t in ([trees] if isinstance(trees, str) else trees)),
            repository="" if debian else str(image["repository"]),
            entrypoint=None if debian else (source / str(image["entrypoint"])).resolve(),
            versions=versions,
            debian_image=str(debian) if debian else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BuildError(f"{path}: cannot read the recipe description: {exc!r}") from exc
    if spec.recipe != source.name:
        raise BuildError(f"{path}: recipe {spec.recipe!r} must match its directory name")
    if not spec.versions:
        raise BuildError(f"{path}: no versions listed")
    missing = [str(p) for p in (*spec.files, *(v.overlay for v in spec.versions if v.overlay))
               if not p.is_dir()]
    missing += [str(p) for v in spec.versions for _, p in v.append if not p.is_file()]
    if spec.entrypoint is not None and not spec.entrypoint.is_file():
        missing.append(str(spec.entrypoint))
    if missing:
        raise BuildError(f"{path}: {', '.join(missing)} missing")
    if spec.debian_image is None and any(not v.image_tag for v in spec.versions):
        raise BuildError(f"{path}: every version needs an image_tag (busybox images)")
    return spec


# --------------------------------------------------------------------------- git


def _git_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    argv = [
        "git", "-C", str(repo),
        "-c", f"user.name={GIT_IDENTITY[0]}", "-c", f"user.email={GIT_IDENTITY[1]}",
        "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false",
        *args,
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False,
        env={**_git_env(), **(env or {})},
    )
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def render(text: str, spec: RecipeSpec, version: VersionSpec) -> str:
    upstream = version.version.partition("+")[2] or version.version
    for key, value in (
        ("@@RECIPE@@", spec.recipe),
        ("@@VERSION@@", version.version),
        ("@@IMAGE@@", spec.image(version)),
        ("@@UPSTREAM@@", upstream),
    ):
        text = text.replace(key, value)
    return text


def _write_tree(spec: RecipeSpec, version: VersionSpec, work: Path) -> None:
    """Replace the work tree (all but .git) by the rendered templates of ``version``: the
    recipe's trees, then the overlays of every version up to this one."""
    for child in work.iterdir():
        if child.name == ".git":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    upto = spec.versions[:spec.versions.index(version) + 1]
    trees = [*spec.files, *(v.overlay for v in upto if v.overlay is not None)]
    for tree in trees:
        for src in sorted(tree.rglob("*")):
            rel = src.relative_to(tree)
            dst = work / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(render(src.read_text(encoding="utf-8"), spec, version),
                           encoding="utf-8")
            dst.chmod(src.stat().st_mode & 0o777)
    for earlier in upto:
        for target, text in earlier.append:
            dst = work / target
            before = dst.read_text(encoding="utf-8").rstrip("\n") + "\n\n" if dst.exists() else ""
            dst.write_text(before + render(text.read_text(encoding="utf-8"), spec, version),
                           encoding="utf-8")


def _tag_commits(repo: Path) -> dict[str, str]:
    """Every tag of ``repo`` and the commit it points at."""
    out = git(repo, "for-each-ref", "--format=%(refname:short) %(*objectname)%(objectname)",
              "refs/tags")
    found = {}
    for line in out.splitlines():
        name, _, objects = line.partition(" ")
        found[name] = objects[:40]
    return found


def _holds(dest: Path, built: Path) -> bool:
    """True when ``dest`` is a repository holding every tag of ``built`` at the same commit
    (what a user added besides, branches and commits, does not matter)."""
    if not (dest / ".git").exists():
        return False
    try:
        have = _tag_commits(dest)
    except BuildError:
        return False
    return all(have.get(tag) == sha for tag, sha in _tag_commits(built).items())


def build_repo(spec: RecipeSpec, recipes_dir: Path, *, keep_existing: bool = False) -> Path:
    """Rebuild ``recipes_dir/<recipe>`` from scratch; it appears whole or not at all.

    With ``keep_existing``, a repository that already holds every expected tag at the
    expected commit is kept as it is (with the user's own branches and commits)."""
    recipes_dir.mkdir(parents=True, exist_ok=True)
    dest = recipes_dir / spec.recipe
    work = Path(tempfile.mkdtemp(prefix=f".{spec.recipe}.build-", dir=recipes_dir))
    try:
        work.chmod(0o755)
        git(work, "init", "-q", "-b", "main")
        notes_so_far: list[VersionSpec] = []
        for index, version in enumerate(spec.versions):
            _write_tree(spec, version, work)
            notes_so_far.append(version)
            for noted in notes_so_far:  # every version's notes stay in later commits
                note = work / "release" / noted.version
                note.parent.mkdir(exist_ok=True)
                note.write_text(noted.notes, encoding="utf-8")
            date = f"@{BASE_EPOCH + index * DAY_S} +0000"
            env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
            git(work, "add", "-A")
            git(work, "commit", "-q", "-m", f"chore: publish {version.version} release", env=env)
            git(work, "tag", "-a", "-m", f"Release {version.version}", version.version, env=env)
        if keep_existing and _holds(dest, work):
            return dest
        old = None
        if dest.exists():
            old = recipes_dir / f".{spec.recipe}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(work, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- images


def is_static_elf(path: Path) -> bool:
    """True when ``path`` is an ELF executable without a program interpreter (PT_INTERP)."""
    with path.open("rb") as handle:
        ident = handle.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        handle.seek(0)
        header = handle.read(64 if is64 else 52)
        if is64:
            phoff, = struct.unpack_from(endian + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", header, 54)
        else:
            phoff, = struct.unpack_from(endian + "I", header, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", header, 42)
        for i in range(phnum):
            handle.seek(phoff + i * phentsize)
            p_type, = struct.unpack(endian + "I", handle.read(4))
            if p_type == 3:  # PT_INTERP: dynamically linked
                return False
    return True


def find_busybox() -> Path:
    found = shutil.which("busybox")
    if found is None:
        raise BuildError("busybox is not installed: apt-get install busybox-static")
    path = Path(found).resolve()
    if not is_static_elf(path):
        raise BuildError(
            f"{path} is dynamically linked and would not run inside an image: "
            "apt-get install busybox-static"
        )
    return path


def busybox_applets(busybox: Path) -> list[str]:
    proc = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, timeout=30, check=True
    )
    return sorted({a for a in proc.stdout.split() if a and "/" not in a and a != "busybox"})


def _add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o644,
         kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    info.type = kind
    info.linkname = link
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def rootfs_tar(spec: RecipeSpec, version: VersionSpec, busybox: Path,
               applets: list[str]) -> bytes:
    """A deterministic root file system tar for ``version``'s image."""
    assert spec.entrypoint is not None, "a Debian image recipe has no busybox root file system"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory, mode in (("bin", 0o755), ("data", 0o755), ("etc", 0o755),
                                ("root", 0o700), ("tmp", 0o1777), ("var", 0o755),
                                ("var/www", 0o755)):
            _add(tar, directory, mode=mode, kind=tarfile.DIRTYPE)
        _add(tar, "bin/busybox", data=busybox.read_bytes(), mode=0o755)
        for applet in applets:
            _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        _add(tar, "entrypoint.sh", data=spec.entrypoint.read_bytes(), mode=0o755)
        _add(tar, "etc/ccci-version", data=f"{spec.recipe} {version.version}\n".encode())
        if version.behaviour:
            _add(tar, "etc/ccci-behaviour", data=version.behaviour_file())
        _add(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"
                                     b"nobody:x:65534:65534:nobody:/:/bin/false\n")
        _add(tar, "etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def docker(*args: str, input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["docker", *args], input=input_bytes, capture_output=True,
            timeout=DOCKER_TIMEOUT_S, check=False,
        )
    except OSError as exc:
        raise BuildError(f"cannot run the docker CLI ({exc}): apt-get install docker.io") from exc


def image_hash_of(image: str) -> str | None:
    proc = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image)
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout.decode() or "null") or {}
    value = labels.get(HASH_LABEL)
    return str(value) if value else None


def build_images(spec: RecipeSpec) -> list[str]:
    """Import every image of ``spec`` that is missing or stale; return the imported ones."""
    if spec.debian_image is not None:
        images = debian_images()
        image = images.load(spec.debian_image)
        try:
            return [image.ref] if images.build(image) else []
        except images.ImageError as exc:
            raise BuildError(str(exc)) from exc
    assert spec.entrypoint is not None
    busybox = find_busybox()
    applets = busybox_applets(busybox)
    built: dict[str, str] = {}
    imported: list[str] = []
    for version in spec.versions:
        image = spec.image(version)
        data = rootfs_tar(spec, version, busybox, applets)
        changes = ['ENTRYPOINT ["/entrypoint.sh"]', "ENV PATH=/bin", "WORKDIR /"]
        digest = hashlib.sha256(data + json.dumps(changes).encode()).hexdigest()
        if built.get(image, digest) != digest:
            raise BuildError(f"{spec.recipe}: two versions want image {image} with other content")
        built[image] = digest
        if image_hash_of(image) == digest:
            continue
        argv = ["import"]
        for change in [*changes, f"LABEL {HASH_LABEL}={digest}"]:
            argv += ["--change", change]
        proc = docker(*argv, "-", image, input_bytes=data)
        if proc.returncode != 0:
            raise BuildError(f"docker import of {image} failed: {proc.stderr.decode().strip()}")
        imported.append(image)
    return imported


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes-dir", type=Path, required=True,
                        help="where the recipe git repositories are (re)built")
    parser.add_argument("--recipe", action="append", default=[],
                        help="build only this recipe (repeatable; default: all)")
    parser.add_argument("--no-images", action="store_true", help="skip docker import")
    parser.add_argument("--keep-existing", action="store_true",
                        help="keep a repository that already holds the expected tags")
    args = parser.parse_args(argv)
    sources = sorted(p.parent for p in RECIPES_SRC.glob("*/recipe.json"))
    if args.recipe:
        unknown = set(args.recipe) - {p.name for p in sources}
        if unknown:
            parser.error(f"unknown recipe(s) {sorted(unknown)}; known: {[p.name for p in sources]}")
        sources = [p for p in sources if p.name in args.recipe]
    try:
        for source in sources:
            spec = load_spec(source)
            repo = build_repo(spec, args.recipes_dir.resolve(),
                              keep_existing=args.keep_existing)
            imported = [] if args.no_images else build_images(spec)
            tags = ", ".join(v.version for v in spec.versions)
            print(f"{spec.recipe}: {repo} (tags {tags}); imported {imported or 'nothing'}")
    except (BuildError, subprocess.SubprocessError) as exc:
        print(f"make_recipes: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
