"""invoke convert's machinery: container arguments, resumable steps, preflight checks, engine errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bevport.convert import runner as runner_module
from bevport.convert.plan import ConvertRequest, mounts, plan, preflight
from bevport.convert.run import bundle_step
from bevport.convert.runner import DockerRunner, Mounts, RunnerError, docker_client, image_tag
from bevport.convert.steps import Step, StepFailed, run_steps


@pytest.fixture
def request_paths(tmp_path):
    ckpt = tmp_path / "ckpts" / "dense_epoch_100_.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    data = tmp_path / "dair-v2x-i-kitti"
    (data / "image_2").mkdir(parents=True)
    (data / "image_2" / "000000.jpg").write_bytes(b"listed, never read by the pre-check")
    return ConvertRequest(ckpt, tmp_path / "work", tmp_path / "dist", data=data, num_samples=32, holdout=4)


def _step(req, name):
    return next(s for s in plan(req) if s.name == name)


def test_container_arguments_mount_inputs_read_only_and_run_as_the_user(request_paths, tmp_path):
    req = request_paths
    ca = tmp_path / "site-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    docker = DockerRunner(client=None, mounts=mounts(req), ca_bundle=ca, user="1234:5678")
    kwargs = docker.run_kwargs(_step(req, "calibrate"))
    assert kwargs["image"] == image_tag("export") and kwargs["user"] == "1234:5678" and kwargs["detach"]
    volumes = kwargs["volumes"]
    assert volumes[str(req.ckpt.parent.resolve())] == {"bind": "/in/ckpt", "mode": "ro"}
    assert volumes[str(req.data.resolve())] == {"bind": "/data", "mode": "ro"}
    assert volumes[str(req.work.resolve())] == {"bind": "/work", "mode": "rw"}
    assert volumes[str(req.dist.resolve())] == {"bind": "/out", "mode": "rw"}
    assert volumes[str(ca.resolve())] == {"bind": runner_module.CA_PATH, "mode": "ro"}
    assert kwargs["environment"]["SSL_CERT_FILE"] == runner_module.CA_PATH
    assert kwargs["environment"]["PIP_CERT"] == runner_module.CA_PATH
    command = kwargs["command"]
    assert command[:2] == ["bevport", "calibrate"]
    assert command[command.index("--onnx") + 1] == "/work/onnx" and command[command.index("--data") + 1] == "/data"
    assert command[command.index("--out") + 1] == "/work/calib"
    assert "devices" not in kwargs and "group_add" not in kwargs
    export = docker.run_kwargs(_step(req, "export"))["command"]
    assert export[export.index("--ckpt") + 1] == "/in/ckpt/dense_epoch_100_.pth"


CONFIG = Path("configs/V2X-I/det/centerhead/lssfpn/camera+pointpillar/resnet34/default.yaml")


def _tree(root: Path) -> Path:
    """A training tree as convert sees it: its mmdet3d package and the hand-written config chain."""
    import shutil

    (root / "mmdet3d").mkdir(parents=True)
    shutil.copytree(Path(__file__).parent / "data" / "configs", root / "configs")
    return root


def test_a_source_tree_adds_the_parity_gate_mounted_read_only(request_paths, tmp_path):
    tree = _tree(tmp_path / "bevfusion")
    req = ConvertRequest(request_paths.ckpt, request_paths.work, request_paths.dist, source=tree,
                         config=CONFIG)
    assert req.config == tree / CONFIG                               # relative: a file of the tree
    names = [s.name for s in plan(req)]
    assert names[:3] == ["export", "parity", "calibrate"]
    docker = DockerRunner(client=None, mounts=mounts(req), user="1:1")
    kwargs = docker.run_kwargs(_step(req, "parity"))
    assert kwargs["volumes"][str(tree.resolve())] == {"bind": "/src", "mode": "ro"}
    command = kwargs["command"]
    assert command[command.index("--source") + 1] == "/src" and command[command.index("--onnx") + 1] == "/work/onnx"
    assert command[command.index("--config") + 1] in (f"/src/{CONFIG}", f"/in/config/{CONFIG.relative_to('configs')}")
    assert "--backend" not in docker.run_kwargs(_step(req, "export"))["command"]
    bundle = bundle_step(req, req.work / "environment.json").argv
    assert bundle[bundle.index("--parity-reference") + 1] == req.work / "parity-reference.json"


def test_the_reference_backend_exports_the_trees_modules_without_a_second_parity(request_paths, tmp_path):
    tree = _tree(tmp_path / "edited")
    req = ConvertRequest(request_paths.ckpt, request_paths.work, request_paths.dist, source=tree,
                         backend="reference")
    export = _step(req, "export")
    assert export.argv[export.argv.index("--backend") + 1] == "reference"
    assert export.argv[export.argv.index("--source") + 1] == tree and export.settings["backend"] == "reference"
    assert "parity" not in [s.name for s in plan(req)]
    assert "--parity-reference" not in bundle_step(req, req.work / "environment.json").argv


@pytest.mark.parametrize("change, message", [
    (dict(backend="reference"), "--backend reference needs --source"),
    (dict(source=Path("/nonexistent/tree")), "--source /nonexistent/tree: no mmdet3d package there"),
    (dict(backend="onnx"), "backend must be native or reference"),
])
def test_source_and_backend_mistakes_are_named_before_any_step(request_paths, change, message):
    req = ConvertRequest(request_paths.ckpt, request_paths.work, request_paths.dist, **change)
    with pytest.raises(RunnerError, match=message):
        preflight(req)


def test_gpu_runs_get_dev_dri_and_the_render_group(request_paths, monkeypatch):
    req = request_paths
    req.device = "GPU"
    monkeypatch.setattr(runner_module, "render_group", lambda dri=None: 109)
    kwargs = DockerRunner(None, mounts(req), gpu=True).run_kwargs(_step(req, "validate"))
    assert kwargs["image"] == image_tag("runtime")
    assert kwargs["devices"] == ["/dev/dri:/dev/dri"] and kwargs["group_add"] == ["109"]
    assert kwargs["command"][kwargs["command"].index("--device") + 1] == "GPU"
    monkeypatch.setattr(runner_module, "render_group", lambda dri=None: None)
    with pytest.raises(RunnerError, match="no render node"):
        DockerRunner(None, mounts(req), gpu=True).run_kwargs(_step(req, "validate"))


def test_validation_and_pictures_use_frames_after_the_calibration_frames(request_paths):
    for name in ("validate", "bench", "pictures"):
        argv = [str(a) for a in _step(request_paths, name).argv]
        assert argv[argv.index("--first-frame") + 1] == "36"


def test_paths_outside_the_mounts_are_refused(tmp_path):
    table = Mounts({"/work": (tmp_path / "work", "rw")})
    assert table.translate(tmp_path / "work" / "a" / "b.json") == "/work/a/b.json"
    with pytest.raises(RunnerError, match="outside the folders mounted"):
        table.translate(tmp_path / "elsewhere.pth")


class RecordingRunner:
    """Runs steps by creating their outputs; counts runs; fails a named step."""
    name = "fake"

    def __init__(self, fail: str = ""):
        self.ran = []
        self.fail = fail

    def image_id(self, kind):
        return f"sha256:{kind}"

    def host_view(self, text):
        return text

    def run(self, step, log):
        self.ran.append(step.name)
        log.write_text("".join(f"line {i}\n" for i in range(40)) + f"{step.name} exploded\n")
        if step.name == self.fail:
            return 3
        for out in step.outputs:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(step.name)
        return 0


def _chain(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("v1")
    a, b = tmp_path / "w" / "a.out", tmp_path / "w" / "b.out"
    return src, [Step("a", "export", ["x", src], {"src": src}, [a]),
                 Step("b", "runtime", ["y", a], {"a": a}, [b], {"device": "CPU"})]


def test_finished_steps_are_skipped_until_an_input_changes(tmp_path):
    src, steps = _chain(tmp_path)
    work = tmp_path / "w"
    runner = RecordingRunner()
    assert run_steps(steps, work, runner) == {"a": "ran", "b": "ran"}
    assert run_steps(steps, work, runner) == {"a": "skipped", "b": "skipped"}
    state = json.loads((work / "a.step.json").read_text())
    assert state["image"] == "sha256:export" and set(state["inputs"]) == {"src"}
    src.write_text("v2")                                   # a's input changed: a reruns; b's input (a.out) did not
    assert run_steps(steps, work, runner) == {"a": "ran", "b": "skipped"}
    steps[1].settings["device"] = "GPU"                    # a changed setting reruns the step
    assert run_steps(steps, work, runner)["b"] == "ran"
    (work / "b.out").unlink()                              # a missing output reruns the step
    assert run_steps(steps, work, runner)["b"] == "ran"
    assert run_steps(steps, work, runner, force=True) == {"a": "ran", "b": "ran"}


def test_a_failing_step_names_itself_shows_its_log_tail_and_records_nothing(tmp_path):
    src, steps = _chain(tmp_path)
    work = tmp_path / "w"
    with pytest.raises(StepFailed) as exc:
        run_steps(steps, work, RecordingRunner(fail="b"))
    assert "step `b` failed (exit 3)" in exc.value.message and "b exploded" in exc.value.message
    assert "line 10" not in exc.value.message                      # only the last lines
    assert (work / "a.step.json").is_file() and not (work / "b.step.json").exists()
    runner = RecordingRunner()
    assert run_steps(steps, work, runner) == {"a": "skipped", "b": "ran"}


def test_preflight_checks_paths_and_gpu_before_anything_runs(request_paths, monkeypatch):
    req = request_paths
    preflight(req)
    missing = ConvertRequest(req.ckpt.with_name("nope.pth"), req.work, req.dist)
    with pytest.raises(RunnerError, match="checkpoint not found: .*nope.pth"):
        preflight(missing)
    with pytest.raises(RunnerError, match="dataset .* must be a folder"):
        preflight(ConvertRequest(req.ckpt, req.work, req.dist, data=req.ckpt))
    monkeypatch.setattr("bevport.convert.plan.render_group", lambda dri=None: None)
    with pytest.raises(RunnerError, match="--device GPU, but /dev/dri has no render node"):
        preflight(ConvertRequest(req.ckpt, req.work, req.dist, device="GPU"))
    assert not req.work.exists() and not req.dist.exists()


def test_no_docker_engine_says_how_to_start_one(monkeypatch):
    pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(RunnerError, match="no Docker engine reachable") as exc:
        docker_client()
    assert "--runner local" in exc.value.hint


def test_convert_task_reports_a_missing_checkpoint_without_writing(tmp_path, capsys):
    from bevport.convert.run import run_convert

    req = ConvertRequest(tmp_path / "missing.pth", tmp_path / "work", tmp_path / "dist")
    with pytest.raises(RunnerError):
        run_convert(req, "local")
    assert not (tmp_path / "work").exists() and not (tmp_path / "dist").exists()


def test_runner_names_the_missing_image(request_paths):
    docker = pytest.importorskip("docker")

    class Images:
        def get(self, tag):
            raise docker.errors.ImageNotFound(tag)

    class Client:
        images = Images()

    with pytest.raises(RunnerError, match=r"bevport-export:.* is not on this host") as exc:
        DockerRunner(Client(), mounts(request_paths)).image_id("export")
    assert "images.build" in exc.value.hint
    assert Path(request_paths.ckpt).is_file()


class FakeImage:
    def __init__(self, tag, image_id, payload):
        self.tags, self.id, self.payload, self.labels = [tag], image_id, payload, {}

    def save(self, named=True):
        yield self.payload[:5]
        yield self.payload[5:]


class FakeImages:
    def __init__(self, images, loads_as=None):
        self.images = {i.tags[0]: i for i in images}
        self.loaded = []
        self.loads_as = loads_as

    def get(self, tag):
        return self.images[tag]

    def load(self, data):
        data = data.read()                       # the real SDK streams the open tarball to the engine
        self.loaded.append(data)
        image = next(i for i in self.images.values() if i.payload == data)
        return [FakeImage(image.tags[0], self.loads_as or image.id, data)]


class FakeClient:
    def __init__(self, loads_as=None):
        self.images = FakeImages([FakeImage(image_tag("export"), "sha256:aaa", b"export-image-bytes"),
                                  FakeImage(image_tag("runtime"), "sha256:bbb", b"runtime-image-bytes")], loads_as)


def test_saved_images_load_only_with_matching_checksums_and_ids(tmp_path):
    from bevport.convert.images import load_images, save_images

    folder = tmp_path / "images"
    saved = save_images(FakeClient(), folder)
    assert [r["id"] for r in saved["images"]] == ["sha256:aaa", "sha256:bbb"]
    assert len((folder / "SHA256SUMS").read_text().splitlines()) == 2 and (folder / "LOAD.md").is_file()
    client = FakeClient()
    assert [r["tag"] for r in load_images(client, folder)] == [image_tag("export"), image_tag("runtime")]
    # an image that loads under another ID than recorded is refused
    with pytest.raises(RunnerError, match="not the recorded image sha256:aaa"):
        load_images(FakeClient(loads_as="sha256:other"), folder)
    # a damaged tarball is refused before anything is loaded
    tarball = folder / saved["images"][1]["file"]
    tarball.write_bytes(tarball.read_bytes()[:-1] + b"X")
    client = FakeClient()
    with pytest.raises(RunnerError, match="does not match SHA256SUMS"):
        load_images(client, folder)
    assert client.images.loaded == []


def _image_checkout(root):
    import subprocess

    for name, text in (("pyproject.toml", "[project]\nname = 'x'\n"), ("README.md", "# x\n"),
                       ("src/x/__init__.py", "A = 1\n"), ("recipes/r.yaml", "a: 1\n"),
                       ("docker/export.Dockerfile", "FROM scratch\n"), ("tests/test_x.py", "A = 1\n")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)


def test_image_from_other_sources_is_flagged_but_not_after_a_docs_or_test_change(tmp_path, monkeypatch):
    from bevport.convert import images

    _image_checkout(tmp_path)
    client = FakeClient()
    image = client.images.get(image_tag("export"))
    image.labels = {"org.opencontainers.image.revision": "0123456789abcdef",
                    "io.bevport.source-sha256": images.source_hash("export", tmp_path)}
    monkeypatch.setattr(images, "git_revision", lambda root=None: {"commit": "fedcba9876543210"})
    assert images.revision_check(client, "export", tmp_path) is None          # same sources, another commit
    (tmp_path / "README.md").write_text("# x, documented\n")
    (tmp_path / "tests" / "test_x.py").write_text("A = 2\n")
    assert images.revision_check(client, "export", tmp_path) is None
    (tmp_path / "src" / "x" / "__init__.py").write_text("A = 2\n")
    warning = images.revision_check(client, "export", tmp_path)
    assert "built from revision 0123456789ab" in warning and "invoke images.build" in warning
    image.labels = {"org.opencontainers.image.revision": "0123456789abcdef"}   # built before the label existed
    assert images.revision_check(client, "export", tmp_path) is not None


def test_build_context_holds_the_dockerfile_locks_source_and_site_ca(tmp_path):
    import io
    import tarfile

    from bevport.convert.images import CA_IN_CONTEXT, build_args, build_context

    ca = tmp_path / "ca.pem"
    ca.write_text("CERT")
    data = build_context("export", ca, mtime=1700000000)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert tar.extractfile("Dockerfile").read().startswith(b"# bevport export image")
        assert tar.extractfile(CA_IN_CONTEXT).read() == b"CERT"
        assert {m.mtime for m in tar.getmembers()} == {1700000000} and {m.uid for m in tar.getmembers()} == {0}
    assert "docker/requirements/export.txt" in names and "src-tree/src/bevport/cli.py" in names
    assert "src-tree/recipes/v2xfusion-pp-r34.yaml" in names
    assert build_context("export", ca, mtime=1700000000) == data          # the same inputs, the same context
    args = build_args("export", "bevport-base:bullseye", {"commit": "abc", "source_date_epoch": "1700000000"})
    assert args["BASE_IMAGE"] == "bevport-base:bullseye" and args["SOURCE_DATE_EPOCH"] == "1700000000"
    assert len(args["LOCK_SHA256"]) == 64


def _fetch_verified(tmp_path, lines):
    import subprocess

    listing = tmp_path / "packages.sha256"
    listing.write_text("# a comment\n\n" + "".join(f"{sum_}  {url}\n" for sum_, url in lines))
    script = Path(__file__).resolve().parents[1] / "docker" / "fetch-verified.sh"
    return subprocess.run(["sh", str(script), str(listing), str(tmp_path / "out")], capture_output=True, text=True)


def test_gpu_packages_are_checked_before_install(tmp_path):
    import hashlib

    good, bad = tmp_path / "intel-igc-core-2_2.2.3+18220_amd64.deb", tmp_path / "libigdgmm12_22.5.4_amd64.deb"
    good.write_bytes(b"good package")
    bad.write_bytes(b"tampered package")
    good_sum = hashlib.sha256(b"good package").hexdigest()
    good_url = good.as_uri().replace("+", "%2B")                          # as on GitHub's release pages
    ok = _fetch_verified(tmp_path, [(good_sum, good_url)])
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "intel-igc-core-2_2.2.3+18220_amd64.deb").read_bytes() == b"good package"
    refused = _fetch_verified(tmp_path, [(good_sum, good_url), ("0" * 64, bad.as_uri())])
    assert refused.returncode == 1 and "libigdgmm12_22.5.4_amd64.deb: sha256" in refused.stderr
    assert not (tmp_path / "out" / "libigdgmm12_22.5.4_amd64.deb").exists()
    missing = _fetch_verified(tmp_path, [(good_sum, (tmp_path / "gone.deb").as_uri())])
    assert missing.returncode == 1 and "could not download" in missing.stderr


def test_shipped_gpu_package_list_is_well_formed():
    listing = Path(__file__).resolve().parents[1] / "docker" / "gpu" / "intel-packages.sha256"
    lines = [line.split() for line in listing.read_text().splitlines() if line.strip() and not line.startswith("#")]
    names = {url.rsplit("/", 1)[1].split("_")[0] for _, url in lines}
    assert names == {"intel-igc-core-2", "intel-igc-opencl-2", "intel-level-zero-gpu", "intel-opencl-icd", "libigdgmm12"}
    assert all(len(sum_) == 64 and int(sum_, 16) >= 0 and url.startswith("https://") for sum_, url in lines)


def test_docker_convert_warns_when_an_image_is_from_other_sources(request_paths, monkeypatch):
    from bevport.convert import images, run

    client = FakeClient()
    client.images.get(image_tag("export")).labels = {"io.bevport.source-sha256": images.source_hash("export")}
    client.images.get(image_tag("runtime")).labels = {"org.opencontainers.image.revision": "0123456789abcdef"}
    monkeypatch.setattr(run, "docker_client", lambda: client)
    said = []
    runner = run.make_runner("docker", request_paths, progress=said.append)
    assert isinstance(runner, DockerRunner)
    assert len(said) == 1 and said[0].startswith("warning: bevport-runtime:") and "invoke images.build" in said[0]


def test_demo_checkpoint_is_drawn_in_the_export_image_when_docker_runs(tmp_path, monkeypatch):
    from bevport.convert import run

    monkeypatch.setattr(run, "docker_client", lambda: FakeClient())
    containers = []

    def fake_run(self, step, log):
        containers.append(self.run_kwargs(step))
        step.outputs[0].write_bytes(b"weights")
        return 0

    monkeypatch.setattr(run.DockerRunner, "run", fake_run)
    out = tmp_path / "demo" / "trained.pth"
    assert run.synthetic_checkpoint(out, "docker", trained=True) == out and out.read_bytes() == b"weights"
    (kwargs,) = containers
    assert kwargs["image"] == image_tag("export") and kwargs["user"] == f"{os.getuid()}:{os.getgid()}"
    assert kwargs["command"] == ["bevport", "synth-ckpt", "--recipe", "v2xfusion-pp-r34", "--out",
                                 "/work/trained.pth", "-q", "--trained"]
    assert kwargs["volumes"] == {str(out.parent.resolve()): {"bind": "/work", "mode": "rw"}}
    run.synthetic_checkpoint(out, "docker", trained=True)   # up to date: no second container
    assert len(containers) == 1


# ------------------------------------------------------------------ defaults written once; the tasks only compose

ROOT = Path(__file__).resolve().parents[1]


def test_frame_counts_default_to_the_recipe(request_paths):
    from bevport.recipe import DEFAULT_RECIPE, load_recipe

    quantize = load_recipe(DEFAULT_RECIPE).quantize
    req = ConvertRequest(request_paths.ckpt, request_paths.work, request_paths.dist, data=request_paths.data)
    assert req.recipe == DEFAULT_RECIPE and req.num_samples is None and req.holdout is None
    calibrate = [str(a) for a in _step(req, "calibrate").argv]
    assert calibrate[calibrate.index("--num-samples") + 1] == str(quantize.calibration_frames)
    assert calibrate[calibrate.index("--holdout") + 1] == str(quantize.holdout_frames)
    for name in ("validate", "bench", "pictures"):
        argv = [str(a) for a in _step(req, name).argv]
        assert argv[argv.index("--first-frame") + 1] == str(quantize.calibration_frames + quantize.holdout_frames)
    req.num_samples = 10                                  # one count given, the other still the recipe's
    argv = [str(a) for a in _step(req, "validate").argv]
    assert argv[argv.index("--first-frame") + 1] == str(10 + quantize.holdout_frames)


def test_preflight_refuses_an_unknown_recipe_before_anything_runs(request_paths):
    from bevport.errors import RecipeError

    request_paths.recipe = "no-such-recipe"
    with pytest.raises(RecipeError):
        preflight(request_paths)
    assert not request_paths.work.exists()


def test_the_default_recipe_name_is_written_only_in_recipe_py():
    from bevport.recipe import DEFAULT_RECIPE

    sources = [p for p in (ROOT / "src").rglob("*.py") if "recipes" not in p.relative_to(ROOT).parts]
    holders = sorted(str(p.relative_to(ROOT)) for p in sources + [ROOT / "tasks.py"] if DEFAULT_RECIPE in p.read_text())
    assert holders == ["src/bevport/recipe.py"]


def _tasks_module():
    import importlib.util

    pytest.importorskip("invoke")
    spec = importlib.util.spec_from_file_location("bevport_tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recording_context():
    import invoke

    class Recording(invoke.Context):
        def run(self, command, **kwargs):
            self.ran.append((self.cwd, command))

    c = Recording()
    c.ran = []
    return c


def test_tasks_leave_defaults_to_the_cli_and_pass_what_is_given():
    import shlex

    tasks = _tasks_module()
    c = _recording_context()
    tasks.calibrate(c)
    tasks.synth_data(c)
    tasks.bench(c, bundle="dist/b")
    tasks.calibrate(c, recipe="other", num_samples="32")
    tasks.synth_data(c, frames="40")
    (calibrate, synth, bench, calibrate_given, synth_given) = [shlex.split(cmd)[3:] for _, cmd in c.ran]
    assert calibrate == ["calibrate", "--onnx", "work/onnx", "--out", "work/calib"]
    assert synth == ["synth-data", "--out", "work/demo/scenes", "--overwrite"]
    assert bench == ["bench", "--bundle", "dist/b"]                        # `invoke bench` is `bevport bench`
    assert calibrate_given[:3] == ["calibrate", "--recipe", "other"] and "--num-samples" in calibrate_given
    assert synth_given[:3] == ["synth-data", "--frames", "40"]
    assert "benchmark" not in tasks.ns.tasks and "benchmarks" in tasks.ns.tasks


def test_no_task_writes_a_default_that_belongs_to_the_cli_or_the_recipe():
    import inspect

    tasks = _tasks_module()
    leave_to_bevport = {"recipe", "num_samples", "holdout", "frames", "seed", "device"}
    demo = {"frames"}                        # the demo's smaller frame count is a deliberate demo setting
    for name, task in tasks.ns.tasks.items():
        for param in inspect.signature(task.body).parameters.values():
            if param.name in leave_to_bevport and not (name == "demo" and param.name in demo):
                assert param.default is None, f"invoke {name} --{param.name} defaults to {param.default!r}"
    assert "recipe" in inspect.signature(tasks.convert.body).parameters


def test_benchmarks_task_runs_the_scripts_in_benchmarks(monkeypatch):
    tasks = _tasks_module()
    monkeypatch.delenv("BEVPORT_REFERENCE_SRC", raising=False)
    c = _recording_context()
    tasks.benchmarks(c)
    scripts = [cmd.split()[1] for _, cmd in c.ran]
    assert scripts == ["benchmarks/export.py", "benchmarks/parity.py", "benchmarks/pool.py",
                       "benchmarks/camera_only.py", "quantize.py", "infer.py", "resume.py", "accuracy.py",
                       "int8_tuning.py"]
    assert all((ROOT / "benchmarks" / Path(s).name).is_file() for s in scripts)
    assert c.ran[4][0] == str(ROOT / "benchmarks")
    monkeypatch.setenv("BEVPORT_REFERENCE_SRC", "/trees")          # the upstream trees: one more script
    c = _recording_context()
    tasks.benchmarks(c)
    assert [cmd.split()[1] for _, cmd in c.ran][4] == "benchmarks/reference_parity.py"


def test_convert_task_builds_a_request_with_the_recipe_defaults(tmp_path, monkeypatch):
    from bevport.convert import run
    from bevport.recipe import DEFAULT_RECIPE

    tasks = _tasks_module()
    seen = []
    monkeypatch.setattr(run, "run_convert", lambda req, *args, **kwargs: seen.append(req) or {})
    tasks.convert(_recording_context(), ckpt=str(tmp_path / "x.pth"), work=str(tmp_path / "w"))
    tasks.convert(_recording_context(), ckpt=str(tmp_path / "x.pth"), recipe="other", num_samples="12", holdout="3",
                  device="GPU")
    default, given = seen
    assert (default.recipe, default.num_samples, default.holdout, default.device) == (DEFAULT_RECIPE, None, None,
                                                                                      "CPU")
    assert (given.recipe, given.num_samples, given.holdout, given.device) == ("other", 12, 3, "GPU")


# ------------------------------------------------------------------ images.* helpers (moved out of tasks.py)

def test_image_bases_follow_base_from_and_overrides():
    from bevport.convert import images

    assert images.base_image("export") is None and images.base_image("runtime") is None     # Dockerfile defaults
    assert images.base_image("export", "debian-mirror") == "bevport-base:bullseye"
    assert images.base_image("runtime", "debian-mirror") == "bevport-base:bookworm"
    assert images.base_image("runtime", "debian-mirror", "my/base:1") == "my/base:1"
    with pytest.raises(RunnerError, match="--base-from must be"):
        images.base_image("export", "dockerhub")
    assert images.image_kinds("both") == ("export", "runtime") and images.image_kinds("runtime") == ("runtime",)
    with pytest.raises(RunnerError, match="export, runtime or both"):
        images.image_kinds("gpu")
    assert images.image_build_args("runtime", "intel") == {"GPU_RUNTIME": "intel"}
    assert images.image_build_args("export", "intel") == {}
    with pytest.raises(RunnerError, match="--gpu-runtime"):
        images.image_build_args("runtime", "nvidia")


def test_build_images_checks_everything_before_the_first_build(monkeypatch):
    from bevport.convert import images

    calls = []
    monkeypatch.setattr(images, "build_image", lambda client, kind, base, ca, progress, extra: calls.append(
        (kind, base, ca, extra)) or f"sha256:{kind}")
    assert images.build_images(None, "both", "debian-mirror", None, "intel", {"export": "my/base:1"}) == \
        {"export": "sha256:export", "runtime": "sha256:runtime"}
    assert calls == [("export", "my/base:1", None, None),
                     ("runtime", "bevport-base:bookworm", None, {"GPU_RUNTIME": "intel"})]
    with pytest.raises(RunnerError):
        images.build_images(None, "both", "registry", gpu_runtime="nvidia")
    assert len(calls) == 2


def test_bootstrap_bases_keeps_present_bases_unless_forced(tmp_path, monkeypatch):
    from bevport.convert import images

    class Images:
        def list(self, name):
            return ["present"] if name == "bevport-base:bullseye" else []

    class Client:
        images = Images()

    made = []
    monkeypatch.setattr(images, "bootstrap_base", lambda client, suite, mirror, tag, workdir, packages, progress:
                        made.append((suite, tag, packages)) or f"sha256:{suite}")
    assert images.bootstrap_bases(Client(), tmp_path / "rootfs") == {"bevport-base:bullseye": None,
                                                                     "bevport-base:bookworm": "sha256:bookworm"}
    assert made == [("bookworm", "bevport-base:bookworm", images.BASE_PACKAGES)]
    images.bootstrap_bases(Client(), tmp_path / "rootfs", ["bullseye"], force=True)
    assert made[-1][:2] == ("bullseye", "bevport-base:bullseye") and (tmp_path / "rootfs").is_dir()


def test_lock_commands_resolve_each_lock_for_its_images_python():
    from bevport.convert.images import lock_commands

    commands = {cmd[cmd.index("-o") + 1]: cmd for cmd in lock_commands()}
    req = "docker/requirements"
    assert list(commands) == [f"{req}/{n}.txt" for n in ("export", "export-build", "export-sources", "runtime")]
    assert all(cmd[:3] == ["uv", "pip", "compile"] and "--generate-hashes" in cmd for cmd in commands.values())
    assert all((ROOT / cmd[3]).is_file() for cmd in commands.values())               # every .in file exists
    python = {out: cmd[cmd.index("--python-version") + 1] for out, cmd in commands.items()}
    assert python == {f"{req}/export.txt": "3.8", f"{req}/export-build.txt": "3.8",
                      f"{req}/export-sources.txt": "3.8", f"{req}/runtime.txt": "3.11"}
    build = commands[f"{req}/export-build.txt"]
    assert build[build.index("-c") + 1] == f"{req}/export.txt"
    assert "--no-deps" in commands[f"{req}/export-sources.txt"] and "--no-deps" not in commands[f"{req}/export.txt"]


def test_convert_task_help_prints_help_and_a_missing_ckpt_is_one_message():
    """`invoke convert --help` prints the options (no positional ckpt swallowing "--help", no -h short flag)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "invoke", "convert", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "--ckpt=STRING" in run.stdout and "--holdout" in run.stdout
    missing = subprocess.run([sys.executable, "-m", "invoke", "convert"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and "--ckpt is required" in missing.stdout + missing.stderr
    assert "Traceback" not in missing.stdout + missing.stderr


def test_doctor_checks_what_the_device_needs_and_names_working_build_commands(monkeypatch, tmp_path):
    from bevport.convert import doctor

    def no_engine():
        raise RunnerError("no Docker engine answers", "start dockerd")

    monkeypatch.setattr(doctor, "docker_client", no_engine)
    cpu = {c.name: c for c in doctor.diagnose(workdir=tmp_path)}          # the default device is convert's: CPU
    assert "/dev/dri" not in cpu and "render group" not in cpu and not cpu["docker engine"].ok
    gpu = [c.name for c in doctor.diagnose("GPU", workdir=tmp_path)]
    assert "/dev/dri" in gpu or "render group" in gpu
    assert "--base-from debian-mirror" in doctor.BUILD_FIX and "images.load" in doctor.BUILD_FIX


def test_images_base_without_debootstrap_says_how_to_install_it(monkeypatch, tmp_path):
    from bevport.convert import images

    monkeypatch.setattr(images.shutil, "which", lambda name: None)
    with pytest.raises(RunnerError, match="debootstrap is not installed") as info:
        images.bootstrap_base(None, "bullseye", images.DEBIAN_MIRROR, "bevport-base:bullseye", tmp_path, [])
    assert "apt-get install debootstrap" in info.value.hint


def test_container_paths_in_messages_become_the_users_paths(tmp_path):
    ckpt_dir, data = tmp_path / "my ckpts", tmp_path / "datasets" / "dair"
    mounts = Mounts({"/in/ckpt": (ckpt_dir, "ro"), "/data": (data, "ro"), "/work": (tmp_path / "w", "rw")})
    text = ("error: /in/ckpt/notes.pth: not a checkpoint\nerror: /data: no image folder\n"
            "wrote /work/onnx/export.json; /database and /data2 and x/data are other things")
    assert mounts.to_host(text) == (f"error: {ckpt_dir}/notes.pth: not a checkpoint\nerror: {data}: no image folder\n"
                                    f"wrote {tmp_path / 'w'}/onnx/export.json; /database and /data2 and x/data are "
                                    "other things")


def test_a_dataset_without_frames_is_refused_before_any_step(tmp_path):
    from bevport.convert.run import run_convert
    from bevport.errors import DatasetError

    ckpt, data = tmp_path / "c.pth", tmp_path / "empty"
    ckpt.write_bytes(b"x")
    data.mkdir()
    req = ConvertRequest(ckpt, tmp_path / "work", tmp_path / "dist", data=data)
    with pytest.raises(DatasetError, match="no image folder"):
        run_convert(req, "local")
    assert not (tmp_path / "work").exists() and not (tmp_path / "dist").exists()


def test_one_convert_per_work_folder_and_leftovers_of_a_killed_run_are_removed(tmp_path):
    """A second convert into a busy work folder is refused at once; the lock is the kernel's, so a run killed by
    SIGKILL releases it. Temporary siblings an interrupted atomic write left behind are removed before resuming."""
    from bevport.fsutil import BusyError, folder_lock, remove_leftovers

    work = tmp_path / "work"
    with folder_lock(work):
        with pytest.raises(BusyError, match=f"{work} is in use by pid {os.getpid()}"):
            with folder_lock(work):
                pass
    with folder_lock(work):          # released on exit
        pass
    (work / ".onnx.abc123.tmp").mkdir()
    (work / ".onnx.abc123.tmp" / "camera.backbone.onnx").write_bytes(b"half")
    (work / ".validate.json.x1.tmp").write_bytes(b"{")
    (work / "onnx").mkdir()
    dist = tmp_path / "dist"
    (dist / ".v2x-0123.q.tmp").mkdir(parents=True)
    (dist / ".other-bundle.q.tmp").mkdir()
    assert remove_leftovers(work) == 2 and remove_leftovers(dist, "v2x-0123") == 1
    assert sorted(p.name for p in work.iterdir()) == [".bevport.lock", "onnx"]
    assert [p.name for p in dist.iterdir()] == [".other-bundle.q.tmp"]


def test_a_killed_lock_holder_does_not_block_the_next_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from bevport.fsutil import folder_lock

    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bevport.fsutil import folder_lock\n"
                               f"with folder_lock({str(work)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    start = time.monotonic()
    with folder_lock(work):
        assert time.monotonic() - start < 5


def test_a_full_disk_and_an_internal_error_are_one_line_each(tmp_path, monkeypatch, capsys):
    import errno

    from bevport.cli import run_reporting_errors
    from bevport.fsutil import atomic_output_dir

    def fill_disk():
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "half.onnx").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "half.onnx"))

    with pytest.raises(SystemExit) as info:
        run_reporting_errors(fill_disk)
    err = capsys.readouterr().err
    assert info.value.code == 1 and "no space left on the device writing" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []               # nothing half-written left behind
    monkeypatch.delenv("BEVPORT_TRACEBACK")

    def bug():
        raise ValueError("an index went wrong")

    with pytest.raises(SystemExit) as info:
        run_reporting_errors(bug)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "internal error (a bevport bug" in err and "Traceback" not in err
    log = Path(err.split("traceback is in ")[1].split(";")[0].strip())
    assert "ValueError: an index went wrong" in log.read_text()
    log.unlink()


def test_a_rebuild_removes_every_image_it_superseded(monkeypatch):
    """The final image and the compile stage's tagged image both move to new builds: the old ones (and the final
    image before its interpreter label) are removed once nothing names them, the current ones are kept."""
    from types import SimpleNamespace

    import docker

    from bevport.convert import images
    from bevport.convert.runner import image_tag

    final, stage = image_tag("export"), "bevport-export-build:" + image_tag("export").split(":")[1]
    tags = {final: "old-final", stage: "old-build"}
    tagged = {"old-final": [], "old-build": [], "new-build": [stage], "unlabelled": [], "new-final": [final]}
    removed = []

    def get(name):
        if name in tags:
            return SimpleNamespace(id=tags[name], tags=tagged[tags[name]])
        if name in tagged:
            return SimpleNamespace(id=name, tags=tagged[name])
        raise docker.errors.ImageNotFound(name)

    def build(tag, target, **kwargs):
        tags[tag] = "new-build" if target else "unlabelled"
        return iter([{"stream": "Step 1/1"}])

    def label(client, kind):
        tags[final] = "new-final"
        return "new-final"

    client = SimpleNamespace(api=SimpleNamespace(build=build),
                             images=SimpleNamespace(get=get, remove=removed.append))
    monkeypatch.setattr(images, "build_context", lambda *a, **k: b"")
    monkeypatch.setattr(images, "label_interpreter", label)
    assert images.build_image(client, "export", "bevport-base:bullseye") == "new-final"
    assert sorted(removed) == ["old-build", "old-final", "unlabelled"]
