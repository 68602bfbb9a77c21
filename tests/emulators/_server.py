"""The lifecycle every emulator shares: a ThreadingHTTPServer on 127.0.0.1 served from a
daemon thread; ``start()``/``close()`` or a ``with`` block."""
from __future__ import annotations

import sys
import threading
from http.server import ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    """A client that went away mid-request (a relay SIGKILLed by a test) is counted in
    ``client_resets``, not printed as a traceback; any other handler error still is."""

    client_resets = 0

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            self.client_resets += 1
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """Base for the emulators.  Subclasses set ``host``/``port`` and implement
    :meth:`_handler_class`; hooks: :meth:`_wrap` (e.g. TLS), :meth:`_before_close`,
    :meth:`_after_shutdown`."""

    thread_name = "emulator"
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def _handler_class(self) -> type:
        raise NotImplementedError

    def _wrap(self, srv: ThreadingHTTPServer) -> None:
        pass

    def _before_close(self) -> None:
        pass

    def _after_shutdown(self) -> None:
        pass

    def start(self):
        srv = _Server((self.host, self.port), self._handler_class())
        srv.daemon_threads = True
        self._wrap(srv)
        self._server = srv
        self.port = srv.server_address[1]
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._before_close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._after_shutdown()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
