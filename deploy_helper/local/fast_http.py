"""The local AWS's HTTP layer: connections kept open, routing remembered, no dropped log lines.

werkzeug's development server answers every request with ``Connection: close``: each
AWS call the broker makes opens a new TCP connection, and the server starts a thread
for it, then waits for the client to hang up before that thread ends. moto's dispatcher
then matches the request's service host against a few hundred URL patterns. Here a
connection stays open for the next request when that is safe (the request's body is
delimited by its Content-Length, the response's by its Content-Length or chunks), and a
host's backend is found once, and flask's debug mode makes no class per request; the
bytes of each answer are those werkzeug sends, less its ``Connection: close``.
"""

from __future__ import annotations

import io
import logging
from typing import Any

#: Hosts whose backend was found, at most this many (a request names its own host).
_HOSTS_KEPT = 256


def install() -> None:
    """Apply the patches to moto's routing and requests (each once); see ``request_handler``."""
    _remember_backend_for_host()
    _no_debug_files_class()


def _remember_backend_for_host() -> None:
    """Find the backend of a service host once.

    moto's ``DomainDispatcherApplication.get_backend_for_host`` answers, for every
    request, by checking whether the host names one of moto's modules and then matching
    ``http://<host>`` against every backend's URL patterns (a few hundred regular
    expressions) until one matches. The modules and patterns are fixed once moto is
    imported, so the answer depends on the host alone: a host's backend is kept and
    handed out again. A host no backend matches is not kept (moto prints a line for an
    unknown ``amazonaws.com`` host each time it is asked; it still does).
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    if getattr(DomainDispatcherApplication.get_backend_for_host, "_once", False):
        return
    find = DomainDispatcherApplication.get_backend_for_host
    found: dict[tuple[int, str], Any] = {}

    def get_backend_for_host(self: Any, host: str | None) -> Any:
        if host is None:
            return None
        key = (id(self.backend_url_patterns), host)
        backend = found.get(key)
        if backend is None:
            backend = find(self, host)
            if backend is not None:
                if len(found) >= _HOSTS_KEPT:
                    del found[next(iter(found))]
                found[key] = backend
        return backend

    get_backend_for_host._once = True  # type: ignore[attr-defined]
    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]


def request_handler(base: type) -> type:
    """``base`` (werkzeug's ``WSGIRequestHandler``, or moto's) keeping connections open.

    werkzeug's ``run_wsgi`` sends ``Connection: close`` with every response, and after
    the application has answered waits up to 10 ms for the client to send anything more
    (reading it away). The subclass serves a request whose body is delimited by its
    ``Content-Length`` (or that has none) itself: it reads exactly that body and hands
    the application a stream of those bytes (a WSGI application reads at most
    Content-Length bytes: werkzeug bounds its stream so), calls the application, and
    sends the status line and headers werkzeug sends (``send_response`` and
    ``send_header``, so ``Server`` and ``Date`` too; a response without Content-Length
    in chunks, as werkzeug frames it) and the body, in one write. The connection then
    stays open unless the client asked to close it, the request was not HTTP/1.1, or the
    response's framing is unclear (its Content-Length differs from its body). Anything
    else -- a chunked request body, an application that raises, a client that goes away
    -- takes werkzeug's own path (a 500 answer and a closed connection for a failure).
    Request log lines are formatted only when the ``werkzeug`` logger would keep them
    (the local AWS sets it to ERROR); errors are logged as before.
    """

    class KeepAliveRequestHandler(base):
        # A response goes out in one write; without Nagle's delay the next request's
        # small segments are not held back either.
        disable_nagle_algorithm = True

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            logger = logging.getLogger("werkzeug")
            if logger.level != logging.NOTSET and not logger.isEnabledFor(logging.INFO):
                return
            super().log_request(code, size)

        def run_wsgi(self) -> None:
            length = _body_length(self.headers)
            if length is None or self.request_version != "HTTP/1.1":
                self.close_connection = True
                super().run_wsgi()
                return
            if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.environ = environ = self.make_environ()
            try:
                body = self.rfile.read(length) if length else b""
                if len(body) != length:  # the client went away mid-body
                    self.close_connection = True
                    return
                environ["wsgi.input"] = io.BytesIO(body)
                started: list[Any] = []

                def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                    if exc_info is None and started:
                        raise AssertionError("Headers already set")
                    started[:] = [status, headers]
                    return _no_write

                answer = self.server.app(environ, start_response)
                try:
                    chunks = [bytes(chunk) for chunk in answer]
                finally:
                    if hasattr(answer, "close"):
                        answer.close()
                if not started:
                    raise AssertionError("the application did not start a response")
                self._send(environ, started[0], started[1], chunks)
            except (TimeoutError, ConnectionError) as e:
                self.close_connection = True
                self.connection_dropped(e, environ)
            except Exception as e:
                if self.server.passthrough_errors:
                    raise
                self.close_connection = True
                _answer_failure(self, environ, e)

        def _send(self, environ: dict[str, Any], status: str, headers: list[Any], chunks: list[bytes]) -> None:
            # what werkzeug's run_wsgi writes, in one piece
            self._headers_buffer = []
            try:
                code_str, msg = status.split(None, 1)
            except ValueError:
                code_str, msg = status, ""
            code = int(code_str)
            self.send_response(code, msg)
            keys = set()
            for key, value in headers:
                self.send_header(key, value)
                keys.add(key.lower())
            body = b"".join(chunks)
            no_body = environ["REQUEST_METHOD"] == "HEAD" or 100 <= code < 200 or code in {204, 304}
            if no_body:
                if body or 100 <= code < 200:
                    self.close_connection = True  # a body the client will not read, or an interim status
            elif "content-length" in keys:
                if _declared_length(headers) != len(body):
                    self.close_connection = True
            else:
                self.send_header("Transfer-Encoding", "chunked")
                body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks if chunk) + b"0\r\n\r\n"
            if self.close_connection:
                self.send_header("Connection", "close")
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(body)
            self.flush_headers()

    return KeepAliveRequestHandler


def _no_write(data: bytes) -> None:
    raise AssertionError("the local AWS's applications return their body; write() is not supported")


def _body_length(headers: Any) -> int | None:
    """The request body's length from its headers; ``None`` when it is not delimited by one."""
    if headers.get("Transfer-Encoding") is not None:
        return None
    values = headers.get_all("Content-Length") or []
    if not values:
        return 0
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


def _declared_length(headers: list[tuple[str, str]]) -> int | None:
    values = [value for key, value in headers if key.lower() == "content-length"]
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


def _answer_failure(handler: Any, environ: dict[str, Any], error: Exception) -> None:
    """werkzeug's answer to an application that raised: a 500, the traceback logged."""
    from werkzeug.debug.tbtools import DebugTraceback
    from werkzeug.exceptions import InternalServerError

    try:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return _no_write

        chunks = list(InternalServerError()(environ, start_response))
        handler._send(environ, started[0], started[1], chunks)
    except Exception:  # noqa: S110 - werkzeug ignores a failure to send the 500 too
        pass
    msg = DebugTraceback(error).render_traceback_text()
    handler.server.log("error", f"Error on request:\n{msg}")


def _no_debug_files_class() -> None:
    """Read a request's form without flask's debug-mode class for its (empty) files.

    moto's Flask apps run in debug mode, and in debug mode flask's
    ``Request._load_form_data``, for every request whose form is loaded and that
    uploaded no file, gives ``request.files`` a class of its own made on the spot (a
    subclass whose missing-key error explains form encodings): a new class per request.
    That class only changes what indexing an empty ``files`` raises, and moto indexes
    ``request.files`` only when it is not empty. So moto's request class loads the form
    as werkzeug does (flask adds nothing else there): the same form, files and body.
    """
    from moto.moto_server.werkzeug_app import BackendRequest
    from werkzeug.wrappers import Request

    if getattr(BackendRequest._load_form_data, "_once", False):
        return

    def _load_form_data(self: Any) -> None:
        Request._load_form_data(self)

    _load_form_data._once = True  # type: ignore[attr-defined]
    BackendRequest._load_form_data = _load_form_data  # type: ignore[method-assign]
