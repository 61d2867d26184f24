"""`kubefusion operator`: run the kopf operator for FusionRuns.

    kubefusion operator [--namespace NS ...] [--metrics-port 8080] [--health-port 8081]
                        [--image IMAGE] [--training-runtime NAME] [--progress-interval 15] [--verbose]

Without --namespace it serves every namespace (cluster-wide RBAC); with it, only those (globs like
team-* work; the operator then also needs list/watch on namespaces to resolve them). It needs no
leader election (standalone; run one replica). Endpoints:
  :METRICS_PORT/metrics   Prometheus metrics (metrics.py)
  :HEALTH_PORT/healthz    kopf's liveness probe
Credentials: the pod's service account in a cluster, else the current kubeconfig context.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
from typing import Any

import kopf
from prometheus_client import start_http_server

from kubefusion_operator.handlers import OperatorConfig, build_registry
from kubefusion_operator.metrics import OperatorMetrics
from kubefusion_operator.render.names import DEFAULT_IMAGE, DEFAULT_TRAINING_RUNTIME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubefusion operator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="serve only this namespace (repeatable; globs allowed). Default: all namespaces",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="port of the Prometheus /metrics endpoint (0: a free port; -1: off). Default 8080",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=8081,
        help="port of the /healthz liveness endpoint (-1: off). Default 8081",
    )
    parser.add_argument("--bind", default="0.0.0.0", help="address the endpoints listen on. Default 0.0.0.0")
    parser.add_argument(
        "--image",
        default=os.environ.get("KUBEFUSION_IMAGE", DEFAULT_IMAGE),
        help=f"kubefusion image of stage Jobs and trainers (env KUBEFUSION_IMAGE). Default {DEFAULT_IMAGE}",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=15.0,
        help="seconds between progress scrapes of a running run. Default 15",
    )
    parser.add_argument("--no-scrape", action="store_true", help="do not read progress from stage pods")
    parser.add_argument(
        "--training-runtime",
        default=os.environ.get("KUBEFUSION_TRAINING_RUNTIME", DEFAULT_TRAINING_RUNTIME),
        help="the ClusterTrainingRuntime TrainJobs reference unless a run names one (env "
        f"KUBEFUSION_TRAINING_RUNTIME). Default {DEFAULT_TRAINING_RUNTIME}, which the Helm chart ships",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def start_metrics_server(metrics: OperatorMetrics, port: int, bind: str) -> tuple[Any, int] | None:
    if port < 0:
        return None
    server, _thread = start_http_server(port, addr=bind, registry=metrics.registry)
    return server, server.server_port


async def run_operator(
    config: OperatorConfig,
    *,
    namespaces: list[str] | None = None,
    metrics: OperatorMetrics | None = None,
    liveness_endpoint: str | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run until cancelled or stop_flag is set (tests and benchmarks call this directly)."""
    memo = kopf.Memo(metrics=metrics or OperatorMetrics())
    try:
        await _operator(config, namespaces, memo, liveness_endpoint, stop_flag, ready_flag)
    finally:  # also when cancelled, where kopf's cleanup handlers do not run
        if "reconciler" in memo:
            await memo.reconciler.api.close()


async def _operator(
    config: OperatorConfig,
    namespaces: list[str] | None,
    memo: kopf.Memo,
    liveness_endpoint: str | None,
    stop_flag: Any,
    ready_flag: Any,
) -> None:
    await kopf.operator(
        registry=build_registry(config),
        clusterwide=not namespaces,
        namespaces=namespaces or (),
        standalone=True,
        memo=memo,
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = OperatorConfig(
        image=args.image,
        progress_interval=args.progress_interval,
        scrape=not args.no_scrape,
        training_runtime=args.training_runtime,
    )
    metrics = OperatorMetrics()
    served = start_metrics_server(metrics, args.metrics_port, args.bind)
    if served:
        logging.getLogger("kubefusion").info(f"metrics on http://{args.bind}:{served[1]}/metrics")
    liveness = f"http://{args.bind}:{args.health_port}/healthz" if args.health_port >= 0 else None
    try:
        asyncio.run(
            run_operator(config, namespaces=args.namespace, metrics=metrics, liveness_endpoint=liveness)
        )
    except KeyboardInterrupt:
        pass
    finally:
        if served:
            served[0].shutdown()
    return 0
