"""An HTTP forward proxy on the host that sends `http://<service>.<namespace>.svc[.cluster.local]:<port>/...` to
a ready pod behind that Service: what cluster DNS and kube-proxy do for a pod's HTTP calls, for the local cluster's
real node, which has neither (hack/node.sh).

Why: the fine-tuning API's inference proxy calls a model's Service by its cluster name, as it must in a real
cluster. On the local node a pod cannot resolve that name or reach a ClusterIP, so an e2e test gives the API's
pods `HTTP_PROXY` pointing here (the chart's `api.env`; httpx honours it) and this proxy does the name-to-pod step
from the Service's EndpointSlices, read with the test's own client. Everything else (the URL the API checks, the
key it reads as the caller, the body it rewrites) is the API's own code, unchanged. Any other host is refused
(502): this is not an open proxy. Listens on the bridge gateway, where the node's pods reach the host.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SERVICE_HOST = re.compile(r"^(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc(\.cluster\.local)?$")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def pod_address(core: Any, discovery: Any, namespace: str, service: str, port: int) -> tuple[str, int] | None:
    """A ready endpoint (pod IP, target port) of `service`'s `port`, or None while there is none."""
    svc = core.read_namespaced_service(service, namespace)
    (spec_port,) = [p for p in svc.spec.ports if p.port == port] or [None]
    if spec_port is None:
        return None
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    ).items
    for endpoint_slice in slices:
        ports = [p.port for p in endpoint_slice.ports or [] if (p.name or "") == (spec_port.name or "")]
        for endpoint in endpoint_slice.endpoints or []:
            if ports and endpoint.addresses and (endpoint.conditions is None or endpoint.conditions.ready):
                return endpoint.addresses[0], int(ports[0])
    return None


@contextmanager
def service_proxy(api_client: Any, host: str) -> Iterator[tuple[str, list[str]]]:
    """The proxy listening on `host` (a free port); yields its URL and the list of `service.namespace:port`
    names it forwarded (so a test can assert its calls went through it)."""
    from kubernetes import client

    core, discovery = client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client)
    forwarded: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request a connection: the end of the body is the end of the stream

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            target = urlsplit(self.path)
            match = SERVICE_HOST.match(target.hostname or "")
            if target.scheme != "http" or match is None or target.port is None:
                self.send_error(502, f"not a Service URL: {self.path}")
                return
            address = pod_address(core, discovery, match["ns"], match["svc"], target.port)
            if address is None:
                self.send_error(502, f"no ready endpoint for {match['svc']}.{match['ns']}:{target.port}")
                return
            forwarded.append(f"{match['svc']}.{match['ns']}:{target.port}")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection(*address, timeout=600)
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request(self.command, path, body=body, headers=headers)
            answer = upstream.getresponse()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            while chunk := answer.read1(65536):  # chunk by chunk: a server-sent event stream passes as it comes
                self.wfile.write(chunk)
                self.wfile.flush()
            upstream.close()

        do_GET = do_POST = do_DELETE = _forward

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", forwarded
    finally:
        server.shutdown()
        server.server_close()
