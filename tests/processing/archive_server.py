"""A loopback server speaking the parts of MAST's API that ``hlsp fetch`` uses (tests only).

- ``POST /portal/Mashup/Mashup.asmx/columnsconfig``: astroquery's own recorded answer
  (astroquery/mast/tests/data/columnsconfig.json);
- ``POST /api/v0/invoke`` with ``request=<json>``: ``Mast.Caom.Filtered`` answers the
  observation rows given (filtered by instrument and filter as MAST does), ``Mast.Caom.Products``
  the product rows of the requested obsids, in MAST's JSON shape (status, fields, data, paging);
- ``GET /api/v0.1/Download/file?uri=...``: the files given by URI, with HTTP Range, and faults
  to order: a number of 500 answers first, a connection cut after some bytes, corrupted bytes;
- ``GET /whoami``: a session for the accepted token (astroquery's login).

Every request is logged (method, path, headers) so a test can check what the client sent.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


def astroquery_data(name: str) -> Path:
    import astroquery.mast

    return Path(astroquery.mast.__file__).parent / "tests" / "data" / name


OBS_FIELDS = [
    ("intentType", "string"),
    ("obs_collection", "string"),
    ("provenance_name", "string"),
    ("instrument_name", "string"),
    ("project", "string"),
    ("filters", "string"),
    ("wavelength_region", "string"),
    ("target_name", "string"),
    ("target_classification", "string"),
    ("obs_id", "string"),
    ("s_ra", "float"),
    ("s_dec", "float"),
    ("dataproduct_type", "string"),
    ("proposal_pi", "string"),
    ("calib_level", "int"),
    ("t_min", "float"),
    ("t_max", "float"),
    ("t_exptime", "float"),
    ("em_min", "float"),
    ("em_max", "float"),
    ("obs_title", "string"),
    ("t_obs_release", "float"),
    ("proposal_id", "string"),
    ("proposal_type", "string"),
    ("sequence_number", "int"),
    ("s_region", "string"),
    ("jpegURL", "string"),
    ("dataURL", "string"),
    ("dataRights", "string"),
    ("mtFlag", "boolean"),
    ("srcDen", "float"),
    ("obsid", "string"),
    ("objID", "string"),
]
PRODUCT_FIELDS = [
    ("obsID", "string"),
    ("obs_collection", "string"),
    ("dataproduct_type", "string"),
    ("obs_id", "string"),
    ("description", "string"),
    ("type", "string"),
    ("dataURI", "string"),
    ("productType", "string"),
    ("productGroupDescription", "string"),
    ("productSubGroupDescription", "string"),
    ("productDocumentationURL", "string"),
    ("project", "string"),
    ("prvversion", "string"),
    ("proposal_id", "string"),
    ("productFilename", "string"),
    ("size", "int"),
    ("parent_obsid", "string"),
    ("dataRights", "string"),
    ("calib_level", "int"),
    ("filters", "string"),
]


def _table(fields, rows):
    return {
        "status": "COMPLETE",
        "msg": "",
        "fields": [{"name": n, "type": t} for n, t in fields],
        "data": [{n: r.get(n) for n, _ in fields} for r in rows],
        "paging": {
            "page": 1,
            "pageSize": len(rows),
            "pagesFiltered": 1,
            "rows": len(rows),
            "rowsFiltered": len(rows),
            "rowsTotal": len(rows),
        },
    }


@dataclass
class Faults:
    fail_first: dict[str, int] = field(default_factory=dict)  # uri -> 500 answers before serving
    cut_after: dict[str, int] = field(default_factory=dict)  # uri -> bytes sent before the connection drops
    corrupt: set[str] = field(default_factory=set)  # uri -> served with one byte changed
    no_range: bool = False


class MastServer:
    """``with MastServer(observations, products, files) as srv: srv.url``."""

    def __init__(self, observations=(), products=(), files=None, token=None, recorded=None):
        self.recorded: dict[str, Path] = dict(recorded or {})  # service -> a recorded answer to give
        self.observations = list(observations)
        self.products = list(products)
        self.files: dict[str, bytes | Path] = dict(files or {})
        self.token = token
        self.faults = Faults()
        self.requests: list[tuple[str, str, dict]] = []
        self.invocations: list[dict] = []  # the MAST requests (service, params) received
        self.served: dict[str, int] = {}

    def __enter__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body: bytes, ctype="application/json", headers=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                server.requests.append(("POST", self.path, dict(self.headers)))
                if self.path.startswith("/portal/Mashup/Mashup.asmx/columnsconfig"):
                    return self._send(200, astroquery_data("columnsconfig.json").read_bytes())
                if self.path.startswith("/api/v0/invoke"):
                    req = json.loads(parse_qs(body)["request"][0])
                    server.invocations.append(req)
                    return self._send(200, json.dumps(server.answer(req)).encode())
                self._send(404, b"{}")

            def do_GET(self):
                server.requests.append(("GET", self.path, dict(self.headers)))
                url = urlparse(self.path)
                if url.path == "/whoami":
                    ok = server.token and f"mast_token={server.token}" in (self.headers.get("Cookie") or "")
                    info = {"anon": not ok, "attrib": {"display_name": "test user"} if ok else {}}
                    return self._send(200, json.dumps(info).encode())
                if url.path == "/api/v0/invoke":
                    return self._send(200, b'{"status": "ERROR", "msg": "POST only"}')
                if url.path == "/api/v0.1/Download/file":
                    return self.download(unquote(parse_qs(url.query)["uri"][0]))
                self._send(404, b"not here", "text/plain")

            def download(self, uri):
                f = server.faults
                if f.fail_first.get(uri, 0) > 0:
                    f.fail_first[uri] -= 1
                    return self._send(500, b"busy", "text/plain")
                if uri not in server.files:
                    return self._send(404, b"no such file", "text/plain")
                data = server.files[uri]
                data = data.read_bytes() if isinstance(data, Path) else data
                if uri in f.corrupt:
                    data = bytearray(data)
                    data[len(data) // 2] ^= 0xFF
                    data = bytes(data)
                start = 0
                rng = self.headers.get("Range")
                if rng and not f.no_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"", "text/plain")
                server.served[uri] = server.served.get(uri, 0) + 1
                part = data[start:]
                code = 206 if start else 200
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(part)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = f.cut_after.pop(uri, None)
                if cut is not None:
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, req: dict) -> dict:
        service = req.get("service")
        params = req.get("params", {})
        if service in self.recorded:
            return json.loads(self.recorded[service].read_text())
        if service == "Mast.Caom.Filtered":
            wanted = {f["paramName"]: [v for v in f["values"]] for f in params.get("filters", [])}
            rows = [
                r
                for r in self.observations
                if all(
                    str(r.get(k)) in [str(v) for v in vals] or any(str(v) in str(r.get(k)) for v in vals)
                    for k, vals in wanted.items()
                    if k in ("instrument_name", "filters", "obs_collection", "proposal_id")
                )
            ]
            return _table(OBS_FIELDS, rows)
        if service == "Mast.Caom.Products":
            ids = set(str(params.get("obsid", "")).split(","))
            return _table(PRODUCT_FIELDS, [p for p in self.products if str(p["parent_obsid"]) in ids])
        return {"status": "ERROR", "msg": f"unknown service {service}", "data": [], "fields": []}


def jwst_program(targets: dict[str, dict], program: int = 2107, sizes: dict[str, int] | None = None):
    """MAST-shaped observation and product rows of a JWST imaging program: ``targets`` maps a
    MAST target name to ``{"nircam": [bands], "miri": [bands], "miri_off": [bands]}``; each
    (target, band) is one level-3 observation whose products are its member exposures
    (2 dithers; NIRCam on NRCA1 for short, NRCALONG for long bands) at levels 1-2 and its i2d;
    MIRI off-fields are parallel exposures (sequence 2) of the target's own observation."""
    obs, prods = [], []
    n = 0
    for tname, bands in targets.items():
        for inst, key in (("NIRCAM/IMAGE", "nircam"), ("MIRI/IMAGE", "miri")):
            for band in bands.get(key, []):
                n += 1
                obsid = str(90000000 + n)
                obs_id = f"jw{program:05d}-o{n:03d}_t001_{key}_{'clear-' if key == 'nircam' else ''}{band.lower()}"
                filters = f"{band};CLEAR" if key == "nircam" else band
                obs.append(
                    {
                        "intentType": "science",
                        "obs_collection": "JWST",
                        "instrument_name": inst,
                        "filters": filters,
                        "target_name": tname,
                        "obs_id": obs_id,
                        "obsid": obsid,
                        "proposal_id": str(program),
                        "calib_level": 3,
                        "dataproduct_type": "image",
                    }
                )
                det = "mirimage" if key == "miri" else ("nrca1" if int(band[1:4]) < 250 else "nrcalong")
                roles = [("1", "science")] + ([("2", "off")] if band in bands.get("miri_off", []) else [])
                for seq, _role in roles:
                    for dither in (1, 2):
                        exp = f"jw{program:05d}{n:03d}001_02{seq}01_{dither:05d}_{det}"
                        for level, sub in ((1, "UNCAL"), (2, "RATE"), (2, "CAL")):
                            fname = f"{exp}_{sub.lower()}.fits"
                            prods.append(
                                {
                                    "obsID": str(80000000 + len(prods)),
                                    "obs_collection": "JWST",
                                    "dataproduct_type": "image",
                                    "obs_id": exp,
                                    "type": "S",
                                    "dataURI": f"mast:JWST/product/{fname}",
                                    "productType": "SCIENCE",
                                    "productSubGroupDescription": sub,
                                    "productFilename": fname,
                                    "size": (sizes or {}).get(fname, 100_000_000 if level == 1 else 50_000_000),
                                    "parent_obsid": obsid,
                                    "proposal_id": str(program),
                                    "calib_level": level,
                                    "filters": filters,
                                }
                            )
                fname = f"{obs_id}_i2d.fits"
                prods.append(
                    {
                        "obsID": obsid,
                        "obs_collection": "JWST",
                        "dataproduct_type": "image",
                        "obs_id": obs_id,
                        "type": "S",
                        "dataURI": f"mast:JWST/product/{fname}",
                        "productType": "SCIENCE",
                        "productSubGroupDescription": "I2D",
                        "productFilename": fname,
                        "size": 500_000_000,
                        "parent_obsid": obsid,
                        "proposal_id": str(program),
                        "calib_level": 3,
                        "filters": filters,
                    }
                )
    return obs, prods
