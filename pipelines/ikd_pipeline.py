"""The ikd DAG: prepare -> adapt -> score -> distill -> evaluate, export -> promote (-> push, when ``dvc_remote``
is set).

``score`` (the frozen teacher's outputs over the distillation rows) is one task, or with ``kubeflow.score_shards``
> 1 a ``ParallelFor`` of tasks over contiguous row ranges whose artifacts ``merge_scores`` joins.

Task names are the step names. The config is a pipeline parameter: the experiment as one line of JSON (what
``params.yaml`` holds, resolved; text rather than a KFP struct, which cannot hold the config's nulls), validated
by ``ikd.config`` before compile or submit and again by each component. The data ``source`` is a folder visible
to the pods (a mounted volume, or a local folder for ``ikd-pipeline run``, kfp.local) or a Hugging Face hub id; with
``dvc_repo`` set it is a path in that DVC repository at ``dvc_rev``. ``dvc_remote``: push the models there.
``current_model``: the model served now, for the ``promote`` gate (empty: the config's ``promote.current``).
Placement (GPUs, node pool, /dev/shm) and cache keys are fixed when the pipeline is compiled, from the config.
"""

from kfp import dsl, kubernetes

from ikd.components import COMPONENTS, DISTILL_TRAINJOB, MERGE_SCORES, PROMOTE, PUSH
from ikd.config import Config
from ikd.integrations import kubeflow


def build(cfg: Config, inputs, cache_keys: dict, image: str):
    """Return the ``@dsl.pipeline`` function for ``cfg``; ``inputs`` (``ikd.integrations.kubeflow.PipelineInputs``)
    gives the parameters' defaults, ``cache_keys`` comes from ``ikd.integrations.kubeflow.cache_keys``; callers go
    through ``ikd.pipelines.runner.build_pipeline``."""
    kc = cfg.kubeflow

    @dsl.pipeline(
        name=kc.pipeline_name,
        description="ikd: prepare -> adapt (teacher) -> distill (student) -> evaluate -> export (ONNX) -> promote",
    )
    def ikd_pipeline(
        config: str = cfg.to_json(),
        source: str = inputs.source,
        dvc_repo: str = inputs.dvc_repo,
        dvc_rev: str = inputs.dvc_rev,
        dvc_remote: str = inputs.dvc_remote,
        current_model: str = "",
    ):
        prepare = COMPONENTS["prepare"](config=config, source=source, dvc_repo=dvc_repo, dvc_rev=dvc_rev)
        if kc.data_claim:  # the data set lives on a volume: --data is a folder under data_mount
            kubernetes.mount_pvc(prepare, pvc_name=kc.data_claim, mount_path=kc.data_mount)
        _dvc_credentials(prepare, kc)
        adapt = COMPONENTS["adapt"](config=config, data=prepare.outputs["data"])
        extra = {}
        if kc.score_shards > 1:
            ranges = [f"{i}/{kc.score_shards}" for i in range(kc.score_shards)]
            with dsl.ParallelFor(items=ranges, name="score-shards") as shard:
                score = COMPONENTS["score"](
                    config=config, data=prepare.outputs["data"], teacher=adapt.outputs["teacher"], shard=shard
                )
                _place_task(score, "score", kc.score, cache_keys, image)
            merged = MERGE_SCORES(config=config, shards=dsl.Collected(score.outputs["scores"]))
            _place_task(merged, "merge-scores", kc.default, {}, image)
            scores = merged.outputs["scores"]
        else:
            score = COMPONENTS["score"](
                config=config, data=prepare.outputs["data"], teacher=adapt.outputs["teacher"], shard="0/1"
            )
            extra["score"] = (score, kc.score)
            scores = score.outputs["scores"]
        if kc.distill_nodes > 1:  # a launcher: TrainJob on N nodes sharing the workspace volume
            distill = DISTILL_TRAINJOB(
                config=config,
                data=prepare.outputs["data"],
                teacher=adapt.outputs["teacher"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                image=image,
            )
            kubernetes.mount_pvc(distill, pvc_name=kc.workspace_claim, mount_path="/workspace")
        else:
            distill = COMPONENTS["distill"](
                config=config, data=prepare.outputs["data"], teacher=adapt.outputs["teacher"], scores=scores
            )
        evaluate = COMPONENTS["evaluate"](
            config=config,
            data=prepare.outputs["data"],
            teacher=adapt.outputs["teacher"],
            student=distill.outputs["student"],
        )
        export = COMPONENTS["export"](config=config, data=prepare.outputs["data"], student=distill.outputs["student"])
        tasks = {"prepare": prepare, "adapt": adapt, "distill": distill, "evaluate": evaluate, "export": export}
        for step, task in tasks.items():
            on_gpu = step == "adapt" or (step == "distill" and kc.distill_nodes == 1)  # a launcher needs no GPU
            _place_task(task, step, getattr(kc, step) if on_gpu else kc.default, cache_keys, image)
        for step, (task, placement) in extra.items():
            _place_task(task, step, placement, cache_keys, image)
        promote = PROMOTE(
            config=config,
            data=prepare.outputs["data"],
            onnx_model=export.outputs["onnx_model"],
            current_model=current_model,
        )
        _place_task(promote, "promote", kc.default, {}, image)
        promote.set_caching_options(enable_caching=False)  # the served model changes outside the pipeline
        with dsl.If(dvc_remote != "", name="dvc-remote-set"):
            push = PUSH(
                remote=dvc_remote,
                teacher=adapt.outputs["teacher"],
                student=distill.outputs["student"],
                onnx_model=export.outputs["onnx_model"],
            )
            kubeflow.place(push, kc.default)
            push.set_caching_options(enable_caching=False)  # a push has an effect outside the pipeline
            if image != kubeflow.IMAGE:
                push.set_container_image(image)
            push.set_display_name("push")
            _dvc_credentials(push, kc)

    return ikd_pipeline


def _dvc_credentials(task, kc) -> None:
    """The DVC remote's Secret (``kubeflow.dvc_secret``) as environment variables and, optionally, files."""
    if not kc.dvc_secret:
        return
    if kc.dvc_secret_env:
        kubernetes.use_secret_as_env(task, secret_name=kc.dvc_secret, secret_key_to_env=dict(kc.dvc_secret_env))
    if kc.dvc_secret_mount:
        kubernetes.use_secret_as_volume(task, secret_name=kc.dvc_secret, mount_path=kc.dvc_secret_mount)


def _place_task(task, name: str, placement, cache_keys: dict, image: str) -> None:
    """Placement, cache key (where ``cache_keys`` has one for ``name``), image and display name of one task."""
    kubeflow.place(task, placement)
    if name in cache_keys:
        key = cache_keys[name]
        task.set_caching_options(enable_caching=key is not None, cache_key=key)
    if image != kubeflow.IMAGE:
        task.set_container_image(image)
    task.set_display_name(name)
