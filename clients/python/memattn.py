"""memattn — a Python client for the memattnd REST API (docs/API.md).

Standard library only; NumPy arrays are accepted wherever a vector is, when NumPy is installed.

Design
------
* One :class:`Client` holds one keep-alive HTTP/1.1 connection (``http.client``); it is not
  thread-safe: use one client per thread.
* Vectors (``k``, ``v``, ``q``) are always sent as base64 of little-endian float32
  (``k_b64`` / ``v_b64`` / ``q_b64``), the daemon's fast path. A vector may be a list or tuple of
  numbers, an ``array.array``, a NumPy array (flattened), ``bytes`` already packed, or a ``str``
  already base64 (:func:`pack_f32`).
* :meth:`Session.append` splits a large list of events into batches whose JSON body fits the
  daemon's body limit (``max_body``: the constructor option, else ``GET /v1/info`` when the daemon
  has it, else 1 MiB). Each batch is applied whole or not at all by the daemon; batches are sent in
  order, so a failure in batch *i* leaves batches before it applied (the error says how many events
  were appended: ``MemattnError.appended``).
* :meth:`Session.append_f32` takes the keys and values of many events as two float arrays and,
  when the daemon takes binary batches (``GET /v1/info`` reports ``batch.events_binary``), sends
  them as ``application/octet-stream`` bodies (docs/API.md "Binary event batches": ``MAEV``, n,
  heads, dim, value_dim, then the float32 keys and values), as many events a body as the limit
  holds; otherwise as JSON through :meth:`Session.append`. The same retries and keys apply.
* Mutations carry an ``Idempotency-Key`` header (a fresh random key per logical request, the same
  key on each retry). Requests are retried only on connection errors and 503 answers, at most
  ``retries`` times, with exponential backoff (``Retry-After`` honoured, bounded).
* Errors are raised as :class:`MemattnError` (``status``, ``code``, ``message``). In a query batch,
  a per-query error object (``{"error": {...}}`` in place of a result) is *not* raised: that result's
  :attr:`Result.error` holds it, and the other results are usable.

Example::

    import memattn
    c = memattn.Client("http://127.0.0.1:8080")
    s = c.create_session("demo", {"dim": 64})
    s.write_slot("capital_of_france", payload="Paris")
    print(s.query([{"text": "capital of France"}])[0]["payload"])   # Paris
"""
from __future__ import annotations

import array
import base64
import http.client
import itertools
import json
import random
import struct
import sys
import time
import urllib.parse
import uuid
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

try:  # optional: accept NumPy arrays as vectors
    import numpy as _np  # type: ignore
except ImportError:  # pragma: no cover - depends on the machine
    _np = None

__all__ = ["Client", "Session", "Result", "MemattnError", "pack_f32", "unpack_f32", "DEFAULT_MAX_BODY"]

DEFAULT_MAX_BODY = 1 << 20          # the daemon's --max-body default
MAX_EVENTS_PER_BATCH = 65536        # the daemon's per-batch event cap
_BIN_MAGIC = b"MAEV"                # a binary event batch: magic, then n, heads, dim, value_dim (<u32)
_BIN_HEADER = 20
_RETRY_AFTER_CAP = 5.0              # seconds: longest Retry-After we wait for

_ENC = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)  # reused: cheaper than json.dumps(**opts)

Vector = Union[Sequence[float], "array.array[float]", bytes, Any]
JSON = Any


class MemattnError(Exception):
    """An error answer of the daemon (or a client-side failure, with status 0).

    Attributes:
        status: the HTTP status (0 for connection errors and client-side checks).
        code: the API's error code, e.g. ``"no_session"``, ``"precondition_failed"``;
            ``"connection"`` for a transport failure, ``"body_too_large"`` for an event too large to
            send in one request.
        message: the daemon's explanation.
        appended: for :meth:`Session.append`, events applied by earlier batches before this error.
    """

    def __init__(self, status: int, code: str, message: str, appended: int = 0) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.appended = appended


class Result(dict):
    """One query result: the daemon's JSON object (``route``, ``v``, ``score``, ``slot``,
    ``version``, ``event``, ``chunks``, ``payload``), or a per-query error."""

    @property
    def error(self) -> Optional[MemattnError]:
        """The per-query error of this result, or None when the query was answered."""
        e = self.get("error")
        if not isinstance(e, dict):
            return None
        return MemattnError(int(e.get("status", 0) or 0), str(e.get("code", "")), str(e.get("message", "")))

    @property
    def ok(self) -> bool:
        """True when this query was answered (no per-query error)."""
        return "error" not in self

    def vector(self) -> List[float]:
        """The output ``v`` as a list of floats (NumPy array when NumPy is present)."""
        v = self.get("v") or []
        return _np.asarray(v, dtype=_np.float32) if _np is not None else [float(x) for x in v]


def pack_f32(x: Vector) -> str:
    """Base64 (standard alphabet, padded) of ``x`` as little-endian float32."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        raw = bytes(x)
    elif _np is not None and isinstance(x, _np.ndarray):
        raw = _np.ascontiguousarray(x, dtype="<f4").ravel().tobytes()
    else:
        a = x if isinstance(x, array.array) and x.typecode == "f" else array.array("f", x)
        if sys.byteorder == "big":
            a = array.array("f", a)
            a.byteswap()
        raw = a.tobytes()
    return base64.b64encode(raw).decode("ascii")


def _f32_view(x: Any) -> memoryview:
    """All the floats of ``x`` as little-endian float32 bytes, viewed (no copy where ``x`` already is
    such bytes or an array): ``x`` is packed bytes, a base64 ``str``, an ``array.array``, a NumPy array
    (flattened), a flat sequence of numbers, or a sequence of per-event vectors (sequences, arrays or
    packed bytes)."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return memoryview(x).cast("B")
    if isinstance(x, str):
        return memoryview(base64.b64decode(x))
    if _np is not None and isinstance(x, _np.ndarray):
        return memoryview(_np.ascontiguousarray(x, dtype="<f4").ravel()).cast("B")
    rows = x if isinstance(x, (list, tuple, array.array)) else list(x)
    if isinstance(rows, array.array):
        a = rows if rows.typecode == "f" else array.array("f", rows)
    elif all(isinstance(r, (int, float)) for r in rows):               # a flat list of numbers
        a = array.array("f", rows)
    elif all(isinstance(r, (list, tuple)) for r in rows):              # per-event lists: the common case
        a = array.array("f", itertools.chain.from_iterable(rows))
    else:                                                              # mixed per-event vectors
        a = array.array("f")
        for row in rows:
            if isinstance(row, (bytes, bytearray, memoryview)):
                a.frombytes(bytes(row) if sys.byteorder == "little" else _swapped(row))
            elif isinstance(row, array.array) and row.typecode == "f":
                a.extend(row)
            else:
                a.extend(array.array("f", _flat(row)))
    if sys.byteorder == "big":
        a = array.array("f", a)
        a.byteswap()
    return memoryview(a).cast("B")


def _rows(x: Any, width: int) -> Optional[Sequence[Any]]:
    """``x`` when it is a list or tuple of per-event lists or tuples of ``width`` numbers each
    (:func:`pack_f32` packs each straight from them), else None."""
    if isinstance(x, (list, tuple)) and all(isinstance(r, (list, tuple)) and len(r) == width for r in x):
        return x
    return None


def _flat(row: Any) -> Any:
    """A NumPy row as a flat float32 array, anything else as it is."""
    if _np is not None and isinstance(row, _np.ndarray):
        return _np.asarray(row, dtype=_np.float32).ravel()
    return row


def _swapped(raw: Any) -> bytes:
    """Little-endian float32 bytes in the host's (big-endian) order, for array.frombytes."""
    a = array.array("f")
    a.frombytes(bytes(raw))
    a.byteswap()
    return a.tobytes()


def unpack_f32(b64: str) -> List[float]:
    """The inverse of :func:`pack_f32`."""
    a = array.array("f")
    a.frombytes(base64.b64decode(b64))
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _etag(version: Optional[int]) -> Optional[str]:
    return None if version is None else f'"{int(version)}"'


def _vec_fields(d: Dict[str, Any], src: Mapping[str, Any], names: Iterable[str]) -> None:
    """Copies src into d, packing vector fields k/v/q to their *_b64 form."""
    for key, val in src.items():
        if key in names and val is not None:
            d[key + "_b64"] = val if isinstance(val, str) else pack_f32(val)   # a str is already base64
        elif val is not None or key == "payload":
            d[key] = val


class Client:
    """A connection to one memattnd.

    Args:
        base_url: ``http://HOST:PORT`` of the daemon.
        token: the daemon's ``--token``, sent as ``Authorization: Bearer``.
        timeout: seconds for connect and for each read.
        max_body: the daemon's request body limit in bytes; None asks ``GET /v1/info`` once (when the
            daemon has that route) and falls back to 1 MiB.
        retries: how many times a request is retried after a connection error or a 503 (0: never).
        backoff: first retry delay in seconds, doubled each retry (with jitter), capped at 2 s.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8080", token: Optional[str] = None,
                 timeout: float = 30.0, max_body: Optional[int] = None, retries: int = 3,
                 backoff: float = 0.05) -> None:
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"base_url must be http://HOST:PORT, got {base_url!r}")
        self._host, self._port = u.hostname, u.port or 80
        self._prefix = u.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self._max_body = max_body
        self._info: Optional[Dict[str, Any]] = None
        self._info_loaded = False
        self._conn: Optional[http.client.HTTPConnection] = None
        self.requests_sent = 0      # HTTP requests sent, retries included (for tests and benchmarks)

    # ---- transport ----------------------------------------------------------------------------
    def close(self) -> None:
        """Closes the connection (a later request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _once(self, method: str, path: str, body: Optional[bytes],
              headers: Dict[str, str]) -> "tuple[int, Dict[str, str], bytes]":
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            self.requests_sent += 1
            self._conn.request(method, self._prefix + path, body=body, headers=headers)
            resp = self._conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                self.close()
            return resp.status, hdrs, data
        except BaseException:
            self.close()
            raise

    def request(self, method: str, path: str, body: Optional[JSON] = None, *,
                raw_body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
                idempotent_key: bool = True, ok: Sequence[int] = (200, 201, 204)
                ) -> "tuple[int, Dict[str, str], JSON]":
        """Sends one API request (with retries) and returns (status, headers, parsed JSON or None).

        ``body`` is serialised as JSON (``raw_body`` is sent as is). Mutations (every method but GET
        and HEAD, when ``idempotent_key``) carry one ``Idempotency-Key`` across retries. A status not
        in ``ok`` raises :class:`MemattnError`.
        """
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        data = raw_body
        if data is None and body is not None:
            data = _ENC.encode(body).encode("utf-8")
        if data is not None:
            h["Content-Type"] = "application/json"
        if method not in ("GET", "HEAD") and idempotent_key:
            h["Idempotency-Key"] = uuid.uuid4().hex
        if headers:
            h.update(headers)
        attempt = 0
        while True:
            delay = min(2.0, self.backoff * (2 ** attempt)) * (0.5 + random.random())
            try:
                status, rh, raw = self._once(method, path, data, h)
            except (OSError, http.client.HTTPException) as e:
                if attempt >= self.retries:
                    raise MemattnError(0, "connection", f"{method} {path}: {e!r}") from e
            else:
                if status != 503 or attempt >= self.retries:
                    break
                ra = rh.get("retry-after", "")
                if ra.isdigit():
                    delay = min(_RETRY_AFTER_CAP, float(ra))
            attempt += 1
            time.sleep(delay)
        doc: JSON = None
        if raw:
            ctype = rh.get("content-type", "")
            if ctype.startswith("application/json"):
                doc = json.loads(raw.decode("utf-8"))
            else:
                doc = raw.decode("utf-8", "replace")
        if status not in ok:
            err = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(err, dict):
                raise MemattnError(status, str(err.get("code", "")), str(err.get("message", "")))
            raise MemattnError(status, "http_%d" % status, str(doc)[:300] if doc else "")
        return status, rh, doc

    # ---- service ------------------------------------------------------------------------------
    def healthz(self) -> bool:
        """True when ``GET /healthz`` answers 200."""
        try:
            return self.request("GET", "/healthz")[0] == 200
        except MemattnError:
            return False

    def info(self) -> Optional[Dict[str, Any]]:
        """``GET /v1/info`` when the daemon has it, else None."""
        try:
            return self.request("GET", "/v1/info")[2]
        except MemattnError as e:
            if e.status in (404, 405):
                return None
            raise

    def _daemon_info(self) -> Optional[Dict[str, Any]]:
        """``GET /v1/info``, asked once per client (None when the daemon has no such route)."""
        if not self._info_loaded:
            self._info = self.info()
            self._info_loaded = True
        return self._info

    @property
    def max_body(self) -> int:
        """The request body limit used to batch events (see the constructor)."""
        if self._max_body is None:
            info = self._daemon_info()
            self._max_body = (_find_limit(info) if info is not None else None) or DEFAULT_MAX_BODY
        return self._max_body

    @property
    def events_binary(self) -> bool:
        """True when the daemon takes binary event batches: its ``GET /v1/info`` reports
        ``batch.events_binary`` (asked once per client, with the body limit)."""
        info = self._daemon_info()
        batch = info.get("batch") if isinstance(info, dict) else None
        return isinstance(batch, dict) and isinstance(batch.get("events_binary"), int)

    # ---- sessions -----------------------------------------------------------------------------
    def create_session(self, id: Optional[str] = None, config: Optional[Mapping[str, Any]] = None) -> "Session":
        """Creates a session (``PUT /v1/sessions/{id}``, idempotent with the same config; ``POST``
        with a server-chosen id when ``id`` is None) and returns its handle. ``.config`` holds the
        full config."""
        cfg = dict(config or {})
        if id is None:
            _, _, doc = self.request("POST", "/v1/sessions", cfg)
        else:
            _, _, doc = self.request("PUT", "/v1/sessions/" + _q(id), cfg)
        s = Session(self, doc["id"])
        s.config = doc.get("config", {})
        return s

    def session(self, id: str) -> "Session":
        """A handle on an existing session (no request is sent)."""
        return Session(self, id)

    def get_session(self, id: str) -> Dict[str, Any]:
        """``GET /v1/sessions/{id}``: config, length, chunks, slots_resident, bytes, backbone norms."""
        return self.request("GET", "/v1/sessions/" + _q(id))[2]

    def list_sessions(self, limit: int = 100) -> Iterator[Dict[str, Any]]:
        """Every session, in id order, following the ``next`` pages (``limit`` per request)."""
        after: Optional[str] = None
        while True:
            qs = {"limit": str(limit)}
            if after:
                qs["after"] = after
            doc = self.request("GET", "/v1/sessions?" + urllib.parse.urlencode(qs))[2]
            yield from doc.get("sessions", [])
            after = doc.get("next")
            if not after:
                return

    def delete_session(self, id: str, missing_ok: bool = False) -> None:
        """``DELETE /v1/sessions/{id}``; with ``missing_ok`` a 404 is not an error."""
        try:
            self.request("DELETE", "/v1/sessions/" + _q(id))
        except MemattnError as e:
            if not (missing_ok and e.status == 404):
                raise


def _find_limit(info: Any) -> Optional[int]:
    """The body limit advertised by GET /v1/info: a `max_body` (or `max_body_bytes`) number at the top
    level or one object down (e.g. ``limits``)."""
    if not isinstance(info, dict):
        return None
    for key in ("max_body", "max_body_bytes"):
        if isinstance(info.get(key), int) and info[key] > 0:
            return int(info[key])
    for val in info.values():
        if isinstance(val, dict):
            for key in ("max_body", "max_body_bytes"):
                if isinstance(val.get(key), int) and val[key] > 0:
                    return int(val[key])
    return None


class Session:
    """One session of a :class:`Client`: events, queries and the slot verbs."""

    def __init__(self, client: Client, id: str) -> None:
        self.client = client
        self.id = id
        self.config: Dict[str, Any] = {}
        self._path = "/v1/sessions/" + _q(id)

    def __repr__(self) -> str:
        return f"Session({self.id!r})"

    def info(self) -> Dict[str, Any]:
        """``GET /v1/sessions/{id}``."""
        return self.client.get_session(self.id)

    def delete(self) -> None:
        """Deletes the session and everything in it."""
        self.client.delete_session(self.id)

    # ---- events -------------------------------------------------------------------------------
    @staticmethod
    def _event_json(ev: Mapping[str, Any]) -> bytes:
        """One event's compact JSON; vectors packed (base64 needs no JSON escaping)."""
        parts = []
        for key, val in ev.items():
            if key in ("k", "v") and val is not None:
                b64 = val if isinstance(val, str) else pack_f32(val)
                parts.append(f'"{key}_b64":"{b64}"')
            elif val is not None or key == "payload":
                parts.append(_ENC.encode(key) + ":" + _ENC.encode(val))
        return ("{" + ",".join(parts) + "}").encode("utf-8")

    def append(self, events: Iterable[Mapping[str, Any]], max_body: Optional[int] = None) -> Dict[str, Any]:
        """Appends events (``{"k"|"text", "v"?, "payload"?, "slot"?, "protect"?}``; vectors packed as
        base64 float32) in as many ``POST .../events`` batches as the body limit needs.

        Returns the merged answer: ``length`` (after the last batch), ``appended``, ``writes``,
        ``void_writes``, ``evicted`` (concatenated over batches) and ``batches`` (requests sent).
        Raises MemattnError (``appended`` = events applied by earlier batches); an event too large for
        one request raises ``body_too_large`` before it is sent.
        """
        limit = max_body or self.client.max_body
        head, tail = b'{"events":[', b"]}"
        out: Dict[str, Any] = {"length": None, "appended": 0, "writes": [], "void_writes": [],
                               "evicted": [], "batches": 0}
        parts: List[bytes] = []
        size = len(head) + len(tail)

        def flush() -> None:
            nonlocal parts, size
            if not parts:
                return
            body = head + b",".join(parts) + tail
            try:
                doc = self.client.request("POST", self._path + "/events", raw_body=body)[2]
            except MemattnError as e:
                e.appended = out["appended"]
                raise
            out["length"] = doc.get("length")
            out["appended"] += int(doc.get("appended", len(parts)))
            for key in ("writes", "void_writes", "evicted"):
                out[key].extend(doc.get(key) or [])
            out["batches"] += 1
            parts, size = [], len(head) + len(tail)

        for i, ev in enumerate(events):
            js = self._event_json(ev)
            if len(head) + len(js) + len(tail) > limit:
                raise MemattnError(0, "body_too_large",
                                   f"event {i} alone is {len(js)} bytes of JSON, over the body limit of {limit}",
                                   appended=out["appended"])
            if parts and (size + 1 + len(js) > limit or len(parts) >= MAX_EVENTS_PER_BATCH):
                flush()
            size += len(js) + (1 if parts else 0)
            parts.append(js)
        flush()
        return out

    def _shape(self, heads: Optional[int], dim: Optional[int], value_dim: Optional[int]) -> "tuple[int, int, int]":
        """(heads, dim, value_dim): each as given, else the session's — this handle's config (set by
        create_session), else ``GET /v1/sessions/{id}`` (asked once, then kept in ``config``)."""
        if heads is None or dim is None or value_dim is None:
            if not self.config.get("dim"):
                self.config = dict(self.info().get("config") or {})
            heads = self.config.get("heads", 1) if heads is None else heads
            dim = self.config.get("dim") if dim is None else dim
            if value_dim is None:
                value_dim = self.config.get("value_dim") or dim
        shape = (heads, dim, value_dim)
        if not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 65536 for x in shape):
            raise MemattnError(0, "invalid", f"heads, dim, value_dim must be integers 1-65536, got {shape}")
        return shape

    @staticmethod
    def _f32_events(k: Any, v: Any, heads: int, dim: int, value_dim: int) -> "tuple[memoryview, memoryview, int]":
        """The keys' and values' float32 bytes and the number of events they hold; MemattnError
        ``invalid`` when they do not hold a whole number of events or disagree on it."""
        kb, vb = _f32_view(k), _f32_view(v)
        kstride, vstride = 4 * heads * dim, 4 * heads * value_dim
        n = len(kb) // kstride
        if len(kb) % kstride or len(vb) != n * vstride:
            raise MemattnError(0, "invalid",
                               f"k has {len(kb) // 4} floats and v {len(vb) // 4}: not n events of heads {heads} "
                               f"x dim {dim} and heads {heads} x value_dim {value_dim}")
        return kb, vb, n

    def append_f32(self, k: Any, v: Any, *, heads: Optional[int] = None, dim: Optional[int] = None,
                   value_dim: Optional[int] = None, binary: Optional[bool] = None,
                   max_body: Optional[int] = None) -> Dict[str, Any]:
        """Appends n events given as float arrays: ``k`` holds n*heads*dim floats and ``v``
        n*heads*value_dim, event by event (head-major within an event, as an event's ``k`` / ``v``).
        Each may be a NumPy array (any shape, flattened), an ``array.array``, packed little-endian
        float32 ``bytes``, a flat list of numbers, or a list of per-event vectors. Such events have no
        payload, slot or text (use :meth:`append` for those).

        The shape is ``heads`` / ``dim`` / ``value_dim`` when given (sent as is: a shape that is not
        the session's is the daemon's 400 ``dim_mismatch``), else the session's (this handle's config,
        else ``GET /v1/sessions/{id}``). ``binary``: None sends binary batches when the daemon takes
        them (:attr:`Client.events_binary`) and JSON (``k_b64``/``v_b64``) otherwise; True or False
        forces one (a daemon without binary batches answers 415). Bodies are cut to the body limit
        (``max_body``, else the client's) and the daemon's 65,536 events a batch; each carries its own
        ``Idempotency-Key``, kept with its body on every retry.

        Returns :meth:`append`'s merged answer plus ``binary`` (which encoding was sent). Raises
        MemattnError: ``invalid`` (status 0, nothing sent) when the arrays do not hold a whole number
        of events or disagree on it; ``body_too_large`` when one event alone exceeds the limit; the
        daemon's errors with ``appended`` = events applied by earlier requests.
        """
        heads, dim, value_dim = self._shape(heads, dim, value_dim)
        kstride, vstride = 4 * heads * dim, 4 * heads * value_dim   # bytes of one event's key / value
        # Per-event lists go to JSON straight from the lists (pack_f32 packs each); anything else, and
        # anything binary, through its float32 bytes, checked before any request.
        kr, vr = _rows(k, kstride // 4), _rows(v, vstride // 4)
        rows = kr is not None and vr is not None and len(kr) == len(vr)
        if binary is False and rows:
            n = len(kr)
        else:
            kv, vv, n = self._f32_events(k, v, heads, dim, value_dim)
        if binary is None:   # (an empty batch sends nothing, not even GET /v1/info)
            binary = n > 0 and self.client.events_binary
        if not binary:
            if not rows:
                kr = [kv[i * kstride:(i + 1) * kstride] for i in range(n)]
                vr = [vv[i * vstride:(i + 1) * vstride] for i in range(n)]
            out = self.append([{"k": ki, "v": vi} for ki, vi in zip(kr, vr)], max_body=max_body)
            out["binary"] = False
            return out
        out: Dict[str, Any] = {"length": None, "appended": 0, "writes": [], "void_writes": [],
                               "evicted": [], "batches": 0, "binary": True}
        if n == 0:
            return out
        limit = max_body or self.client.max_body
        per = kstride + vstride
        cap = min(MAX_EVENTS_PER_BATCH, (limit - _BIN_HEADER) // per)
        if cap < 1:
            raise MemattnError(0, "body_too_large",
                               f"one event is {per} bytes in a binary batch (after its {_BIN_HEADER}-byte header), "
                               f"over the body limit of {limit}")
        hdrs = {"Content-Type": "application/octet-stream"}
        for i in range(0, n, cap):
            m = min(cap, n - i)
            body = b"".join((_BIN_MAGIC, struct.pack("<4I", m, heads, dim, value_dim),
                             kv[i * kstride:(i + m) * kstride], vv[i * vstride:(i + m) * vstride]))
            try:
                doc = self.client.request("POST", self._path + "/events", raw_body=body, headers=hdrs)[2]
            except MemattnError as e:
                e.appended = out["appended"]
                raise
            out["length"] = doc.get("length")
            out["appended"] += int(doc.get("appended", m))
            for key in ("writes", "void_writes", "evicted"):
                out[key].extend(doc.get(key) or [])
            out["batches"] += 1
        return out

    # ---- queries ------------------------------------------------------------------------------
    def query(self, queries: Iterable[Mapping[str, Any]]) -> List[Result]:
        """``POST .../query`` with ``{"q"|"text"?, "slot"?, "version"?, "route"?, "topk"?}`` each.

        Returns one :class:`Result` per query, in order. A per-query error object is returned in that
        result (``result.error``), not raised; an error for the whole request is raised."""
        qs = []
        for q in queries:
            d: Dict[str, Any] = {}
            _vec_fields(d, q, ("q",))
            qs.append(d)
        doc = self.client.request("POST", self._path + "/query", {"queries": qs}, idempotent_key=False)[2]
        return [Result(r) for r in doc.get("results", [])]

    def query_one(self, q: Optional[Vector] = None, **fields: Any) -> Result:
        """One query; its per-query error, if any, is raised."""
        if q is not None:
            fields["q"] = q
        r = self.query([fields])[0]
        if r.error is not None:
            raise r.error
        return r

    # ---- slots --------------------------------------------------------------------------------
    def _slot_body(self, fields: Mapping[str, Any]) -> Dict[str, Any]:
        d: Dict[str, Any] = {}
        _vec_fields(d, {k: v for k, v in fields.items() if v is not None or k == "payload"}, ("k", "v"))
        return d

    def slots(self) -> List[Dict[str, Any]]:
        """Resident slots in name order (``name``, ``version``, ``protected``, ``event``, ``usage``)."""
        return self.client.request("GET", self._path + "/slots")[2].get("slots", [])

    def slot(self, name: str, version: Optional[int] = None) -> Dict[str, Any]:
        """``GET .../slots/{name}[?version=n]``; the answer plus ``etag`` (the ETag header)."""
        path = self._path + "/slots/" + _q(name) + (f"?version={int(version)}" if version is not None else "")
        _, h, doc = self.client.request("GET", path)
        doc["etag"] = h.get("etag")
        return doc

    def versions(self, name: str) -> List[Dict[str, Any]]:
        """A slot's version history, oldest first (``tombstone`` marks an eviction)."""
        return self.client.request("GET", self._path + "/slots/" + _q(name) + "/versions")[2].get("versions", [])

    def write_slot(self, name: str, payload: JSON = None, *, k: Optional[Vector] = None,
                   v: Optional[Vector] = None, text: Optional[str] = None,
                   protect: Optional[bool] = None) -> Dict[str, Any]:
        """Writes a new slot (``POST .../slots``): 409 ``exists`` when resident (use :meth:`put_slot`)."""
        body = self._slot_body({"name": name, "k": k, "v": v, "text": text, "payload": payload, "protect": protect})
        return self.client.request("POST", self._path + "/slots", body)[2]

    def put_slot(self, name: str, payload: JSON = None, *, k: Optional[Vector] = None,
                 v: Optional[Vector] = None, text: Optional[str] = None, protect: Optional[bool] = None,
                 version: Optional[int] = None, if_match: Optional[int] = None) -> Dict[str, Any]:
        """Writes or overwrites a slot (``PUT .../slots/{name}``). ``if_match``: the version the slot
        must be at (412 ``precondition_failed`` otherwise); ``version``: an explicit new version."""
        body = self._slot_body({"k": k, "v": v, "text": text, "payload": payload, "protect": protect,
                                "version": version})
        hdr = {"If-Match": _etag(if_match)} if if_match is not None else None
        return self.client.request("PUT", self._path + "/slots/" + _q(name), body, headers=hdr)[2]

    def protect(self, name: str, protected: bool = True, if_match: Optional[int] = None) -> Dict[str, Any]:
        """Protects (or unprotects) a slot (``PATCH``)."""
        hdr = {"If-Match": _etag(if_match)} if if_match is not None else None
        return self.client.request("PATCH", self._path + "/slots/" + _q(name), {"protected": bool(protected)},
                                   headers=hdr)[2]

    def evict(self, name: str, if_match: Optional[int] = None) -> None:
        """Evicts a slot from the resident set (``DELETE``); its history stays readable."""
        hdr = {"If-Match": _etag(if_match)} if if_match is not None else None
        self.client.request("DELETE", self._path + "/slots/" + _q(name), headers=hdr)

    def restore(self, name: str, version: int, if_match: Optional[int] = None) -> Dict[str, Any]:
        """Makes version ``version``'s value current again as a new version (also after eviction)."""
        hdr = {"If-Match": _etag(if_match)} if if_match is not None else None
        return self.client.request("POST", self._path + "/slots/" + _q(name) + "/restore",
                                   {"version": int(version)}, headers=hdr)[2]
