"""``fusionrt triton build``, ``fusionrt triton deploy`` and ``fusionrt serve``: thin command-line
layers over :func:`fusionrt.triton.build_repository`, :func:`fusionrt.triton.deploy.write_deployment`
and :func:`fusionrt.triton.serve`.

The main CLI calls :func:`add_triton_commands` with its subparsers; handlers return the exit code
and raise :class:`~fusionrt.FusionrtError` subclasses, which the main CLI reports.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fusionrt.errors import InputError


def _int_list(example: str):
    """An argparse type: comma-separated integers such as ``example``."""

    def parse(text: str) -> tuple[int, ...]:
        if not text.strip():
            return ()
        try:
            return tuple(int(b) for b in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers like {example}, got {text!r}") from None

    return parse


def _model_counts(text: str) -> dict:
    """``image_encoder=2,preprocess=1`` -> {"image_encoder": 2, "preprocess": 1}."""
    out: dict = {}
    for part in (p.strip() for p in text.split(",")):
        model, _, count = (x.strip() for x in part.partition("="))
        if not model or not re.fullmatch(r"[0-9]+", count):
            raise argparse.ArgumentTypeError(f"expected comma-separated MODEL=COUNT like image_encoder=2, got {part!r}")
        if model in out:
            raise argparse.ArgumentTypeError(f"{model} is given twice in {text!r}")
        out[model] = int(count)
    return out


class _MergeCounts(argparse.Action):
    """Repeated --model-instances flags add up; a model named twice is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest) or {})
        twice = sorted(set(merged) & set(values))
        if twice:
            parser.error(f"{option_string}: {', '.join(twice)} given twice")
        setattr(namespace, self.dest, merged | values)


_batch_sizes = _int_list("4,8")
_seq_buckets = _int_list("16,32,64,128")


def _build(args) -> int:
    from fusionrt.triton.install import local_backend
    from fusionrt.triton.repository import RepositoryOptions, build_repository

    local = local_backend()
    options = RepositoryOptions(
        max_batch_size=args.max_batch_size,
        preferred_batch_size=args.preferred_batch_size,
        max_queue_delay_microseconds=args.max_queue_delay_microseconds,
        instances=args.instances,
        model_instances=args.model_instances,
        threads_per_instance=args.threads_per_instance,
        device=args.device,
        backend=args.backend or local.backend,
        dynamic_batching=args.dynamic_batching == "on",
        seq_buckets=args.seq_buckets,
        explain_method=args.explain_method,
    )
    path = build_repository(args.bundle, args.output, options, overwrite=args.overwrite)
    print(f"Triton model repository written to {path}")
    chosen = "given" if args.backend else f"--backend not given: {local.reason}"
    print(f"backend {options.backend} ({chosen}), device {options.device}")
    if local.server is not None and options.backend in local.server_backends:
        print(f"serve it with: fusionrt serve {path}")
    else:
        where = (f"`fusionrt serve` would start {local.server}, which has no {options.backend} backend"
                 if local.server is not None else "`fusionrt serve` found no Triton server here")
        print(f"{where}: serve it with a Triton server that has the {options.backend} backend (an NGC Triton container: "
              f"pip install -r {path / 'requirements.txt'}, then tritonserver --model-repository={path})"
              + (", or rebuild with --backend python for `fusionrt serve`" if local.server is not None else ""))
    return 0


def _deploy(args) -> int:
    from fusionrt.triton.deploy import DEFAULT_IMAGE, DEFAULT_URI, DeployOptions, write_deployment

    options = DeployOptions(
        kind=args.kind,
        image=args.image or DEFAULT_IMAGE,
        model_repository_uri=args.model_repository_uri or DEFAULT_URI,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        gpus=args.gpus,
        cpu=args.cpu,
        memory=args.memory,
        namespace=args.namespace,
        target_queue_us=args.target_queue_us,
    )
    path = write_deployment(args.repository, args.output, options, bench_result=args.bench_result, overwrite=args.overwrite)
    print(f"{options.kind} deployment written to {path} (see {path / 'README.md'})")
    if options.image == DEFAULT_IMAGE:
        print(f"--image is the placeholder {DEFAULT_IMAGE}: build and push the server image, then pass yours:")
    else:
        print("build and push the server image it runs:")
    checkout = Path(__file__).parents[3]  # src/fusionrt/triton/cli.py in a fusionrt checkout
    source = checkout if (checkout / "pyproject.toml").is_file() else "PATH/TO/fusionrt"
    print(f"  pip wheel --no-deps -w {path / 'wheels'} {source} && docker build -t {options.image} {path} && docker push {options.image}")
    apply = f"kubectl apply -k {path}" if options.kind == "kubernetes" else f"kubectl apply -f {path / 'inferenceservice.yaml'} -f {path / 'networkpolicy.yaml'}"
    print(f"then: {apply}")
    return 0


def _serve(args) -> int:
    from fusionrt.triton.server import ADMIN_HEADER, DEVELOPMENT_SERVER_WARNING, RESTRICTED_APIS, serve

    started = []

    def ready(server) -> None:
        started.append(server)
        print(
            f"serving {server.repository}: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url} "
            f"(server pid {server.pid}); Ctrl-C to stop\n"
            f"admin APIs ({', '.join(RESTRICTED_APIS)}) need the header {ADMIN_HEADER} with the key in "
            f"{server.admin_key_file} (mode 0600, new at every start), e.g.\n"
            f"  curl -X POST -H \"{ADMIN_HEADER}: $(cat {server.admin_key_file})\" http://{server.http_url}/v2/repository/index\n"
            f"  fusionrt bench --url {server.grpc_url} --admin-key-file {server.admin_key_file}\n"
            f"inference, health and metadata need no key\n"
            f"warning: {DEVELOPMENT_SERVER_WARNING}",
            flush=True,
        )

    for name in ("http_port", "grpc_port", "metrics_port"):
        if not 0 <= getattr(args, name) <= 65535:
            raise InputError(f"--{name.replace('_', '-')} must be 0..65535 (0: a free port), got {getattr(args, name)}")
    code = serve(
        args.repository,
        http_port=args.http_port or None,
        grpc_port=args.grpc_port or None,
        metrics_port=args.metrics_port or None,
        startup_timeout_s=args.startup_timeout_s,
        log_path=args.log_file,
        on_ready=ready,
        admin_key_file=args.admin_key_file,
    )
    if started:  # serve() returns once the server and its python stubs are gone
        server = started[0]
        print(f"server stopped: {server.repository} is no longer served (gRPC {server.grpc_url}, HTTP {server.http_url} closed; "
              f"server pid {server.pid} and its python backend stubs exited)", flush=True)
    return code


def add_triton_commands(subparsers) -> None:
    """Add ``triton build``, ``triton deploy`` and ``serve`` to the ``fusionrt`` command's subparsers."""
    triton = subparsers.add_parser("triton", help="Triton model repositories")
    triton_sub = triton.add_subparsers(dest="triton_command", required=True)
    p = triton_sub.add_parser("build", help="write a Triton model repository (ensemble) serving a bundle")
    p.add_argument("bundle", help="bundle directory written by `fusionrt export`")
    p.add_argument("-o", "--output", required=True, help="repository directory to write")
    p.add_argument("--backend", default=None, choices=["onnxruntime", "python"],
                   help="encoders on Triton's onnxruntime backend, or python models running onnxruntime "
                        "(for servers without the onnxruntime backend, e.g. nvidia-pytriton's) (default: what the "
                        "server `fusionrt serve` would start supports: onnxruntime if it has it, else python; "
                        "onnxruntime when no server is found here)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="instance kind of the encoders; gpu adds TensorRT for tensorrt-target bundles (default: cpu)")
    p.add_argument("--max-batch-size", type=int, default=None, help="default: the bundle's max_batch_size")
    p.add_argument("--preferred-batch-size", type=_batch_sizes, default=None,
                   help="comma-separated batch sizes the dynamic batcher aims for (default: 4,8, those within the max batch size)")
    p.add_argument("--max-queue-delay-microseconds", type=int, default=2000,
                   help="how long a request may wait to be batched with others (default: 2000)")
    p.add_argument("--dynamic-batching", default="on", choices=["on", "off"],
                   help="dynamic_batching block in every model (off: to measure what it brings) (default: on)")
    p.add_argument("--seq-buckets", type=_seq_buckets, default=None,
                   help="comma-separated text lengths in tokens that preprocess pads to, the last one the bundle's "
                        "max_seq_len; give only max_seq_len to pad every text to it (default: 16,32,64,...,max_seq_len)")
    p.add_argument("--explain-method", default=None, choices=("grad-cam", "gradient", "rollout"),
                   help="the method of the served EXPLANATION output, as `fusionrt explain --method` "
                        "(default: grad-cam; gradient for bundles exported before it)")
    p.add_argument("--instances", type=int, default=1, help="instances per model (default: 1)")
    p.add_argument("--model-instances", type=_model_counts, action=_MergeCounts, default=None, metavar="MODEL=N,...",
                   help="instances of single models over --instances, e.g. image_encoder=2 "
                        "(default with --device cpu: image_encoder=max(2, --instances), the heaviest step)")
    p.add_argument("--threads-per-instance", type=int, default=1,
                   help="ONNX Runtime intra-op threads per encoder instance (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace the models of an existing repository")
    p.set_defaults(func=_build)

    p = triton_sub.add_parser("deploy", help="write the Kubernetes or KServe deployment of a model repository")
    p.add_argument("repository", help="model repository written by `fusionrt triton build` (configs and requirements.txt are read)")
    p.add_argument("-o", "--output", required=True, help="deployment directory to write")
    p.add_argument("--kind", default="kubernetes", choices=["kubernetes", "kserve"],
                   help="Deployment, Service, ServiceMonitor, HPA and kustomization, or a KServe InferenceService (default: kubernetes)")
    p.add_argument("--image", default=None,
                   help="the server image the generated Dockerfile builds (default: a placeholder name under "
                        "registry.example.com; build and push yours)")
    p.add_argument("--model-repository-uri", default=None,
                   help="s3://BUCKET/PATH, gs://BUCKET/PATH, as://ACCOUNT/CONTAINER/PATH (kubernetes) or pvc:NAME "
                        "(default: pvc:fusionrt-model-repository)")
    p.add_argument("--replicas", type=int, default=1, help="fewest replicas (default: 1)")
    p.add_argument("--max-replicas", type=int, default=4, help="most replicas (default: 4)")
    p.add_argument("--gpus", type=int, default=None,
                   help="nvidia.com/gpu per replica (default: 1 if the repository has KIND_GPU instances, else 0)")
    p.add_argument("--cpu", default="2", help="CPU request per replica, a Kubernetes quantity (default: 2)")
    p.add_argument("--memory", default="8Gi", help="memory request and limit per replica (default: 8Gi)")
    p.add_argument("--namespace", default="fusionrt",
                   help="the namespace of every resource (the kustomization creates it; not 'default') (default: fusionrt)")
    p.add_argument("--target-queue-us", type=int, default=None,
                   help="autoscaling target: Triton queue time per request in microseconds (default: from --bench-result, "
                        "else the repository's summed max_queue_delay_microseconds)")
    p.add_argument("--bench-result", default=None,
                   help="results.json of `fusionrt bench --url` against one replica: its per-replica capacity sets the targets")
    p.add_argument("--overwrite", action="store_true", help="replace an existing deployment directory")
    p.set_defaults(func=_deploy)

    p = subparsers.add_parser("serve", help="serve a Triton model repository on 127.0.0.1 until Ctrl-C")
    p.add_argument("repository", help="model repository written by `fusionrt triton build`")
    p.add_argument("--http-port", type=int, default=8000, help="0: a free port (default: 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="0: a free port (default: 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="0: a free port (default: 8002)")
    p.add_argument("--startup-timeout-s", type=float, default=120.0, help="seconds to wait for readiness (default: 120)")
    p.add_argument("--log-file", default=None, help="write the server log here (default: a temporary file)")
    p.add_argument("--admin-key-file", default=None,
                   help="write the admin key here, mode 0600, removed at stop (default: in the server's temporary folder; "
                        "the path is printed)")
    p.set_defaults(func=_serve)
