#!/usr/bin/env python3
"""Keyward cloud mock: AWS Bedrock (SigV4), Google token endpoint + Vertex AI,
Microsoft Entra ID + Azure OpenAI, all on one plain-HTTP port.

Authentication is verified with third-party code, not ours:
  * SigV4 is recomputed by botocore (botocore.auth.SigV4Auth).
  * Google service-account JWT assertions are verified by google-auth
    (google.auth.jwt.decode); PyJWT is used only to read the unverified header.

Usage:
  python cloud_mock.py --port 0 --state-dir DIR \
      [--aws-access-key-id AK --aws-secret-access-key SK [--aws-session-token T]] \
      [--google-public-key PEM_FILE --google-client-email EMAIL] \
      [--entra-tenant T --entra-client-id ID --entra-client-secret S] \
      [--token-lifetime SECONDS]
  python cloud_mock.py --self-test

On start it prints exactly one line "LISTENING <port>" to stdout.
Log lines (stderr) contain method, path (without query) and status only.
"""

import argparse
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.auth
import botocore.awsrequest
import botocore.credentials

SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW = 300  # seconds, like AWS
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

AWS_SIG_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)

BEDROCK_MODELS = [
    {
        "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-sonnet-20240620-v1:0",
        "modelId": "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "modelName": "Claude 3.5 Sonnet",
        "providerName": "Anthropic",
        "inputModalities": ["TEXT", "IMAGE"],
        "outputModalities": ["TEXT"],
        "responseStreamingSupported": True,
        "customizationsSupported": [],
        "inferenceTypesSupported": ["ON_DEMAND"],
        "modelLifecycle": {"status": "ACTIVE"},
    },
    {
        "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0",
        "modelId": "amazon.nova-pro-v1:0",
        "modelName": "Nova Pro",
        "providerName": "Amazon",
        "inputModalities": ["TEXT", "IMAGE", "VIDEO"],
        "outputModalities": ["TEXT"],
        "responseStreamingSupported": True,
        "customizationsSupported": [],
        "inferenceTypesSupported": ["ON_DEMAND"],
        "modelLifecycle": {"status": "ACTIVE"},
    },
    {
        "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0",
        "modelId": "meta.llama3-8b-instruct-v1:0",
        "modelName": "Llama 3 8B Instruct",
        "providerName": "Meta",
        "inputModalities": ["TEXT"],
        "outputModalities": ["TEXT"],
        "responseStreamingSupported": True,
        "customizationsSupported": [],
        "inferenceTypesSupported": ["ON_DEMAND"],
        "modelLifecycle": {"status": "ACTIVE"},
    },
]

VERTEX_GOOGLE_MODELS = [
    {"name": "publishers/google/models/gemini-2.0-flash-001", "versionId": "001",
     "openSourceCategory": "PROPRIETARY", "launchStage": "GA"},
    {"name": "publishers/google/models/gemini-1.5-pro-002", "versionId": "002",
     "openSourceCategory": "PROPRIETARY", "launchStage": "GA"},
]


# --------------------------------------------------------------------------
# AWS event-stream encoding (application/vnd.amazon.eventstream)
# --------------------------------------------------------------------------

def _es_header(name, value):
    n = name.encode("utf-8")
    v = value.encode("utf-8")
    # name length (1 byte), name, type 7 (string), value length (2 bytes BE), value
    return struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v


def encode_event_frame(headers, payload):
    """headers: list of (name, str value); payload: bytes."""
    hdr = b"".join(_es_header(k, v) for k, v in headers)
    total = 4 + 4 + 4 + len(hdr) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hdr))
    prelude_crc = struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    msg = prelude + prelude_crc + hdr + payload
    return msg + struct.pack(">I", binascii.crc32(msg) & 0xFFFFFFFF)


def event_frame(event_type, obj):
    return encode_event_frame(
        [(":event-type", event_type), (":content-type", "application/json"),
         (":message-type", "event")],
        json.dumps(obj, separators=(",", ":")).encode("utf-8"),
    )


def exception_frame(exception_type, message):
    return encode_event_frame(
        [(":exception-type", exception_type), (":content-type", "application/json"),
         (":message-type", "exception")],
        json.dumps({"message": message, "originalStatusCode": 500,
                    "originalMessage": message}).encode("utf-8"),
    )


def converse_stream_frames(midstream_error=False):
    frames = [event_frame("messageStart", {"role": "assistant"})]
    if midstream_error:
        frames.append(exception_frame("modelStreamErrorException",
                                      "The model encountered an error while streaming."))
        return frames
    frames += [
        event_frame("contentBlockDelta", {"delta": {"text": "Hello"}, "contentBlockIndex": 0}),
        event_frame("contentBlockDelta", {"delta": {"text": " from Bedrock"}, "contentBlockIndex": 0}),
        event_frame("contentBlockStop", {"contentBlockIndex": 0}),
        event_frame("messageStop", {"stopReason": "end_turn"}),
        event_frame("metadata", {"usage": {"inputTokens": 11, "outputTokens": 5, "totalTokens": 16},
                                 "metrics": {"latencyMs": 42}}),
    ]
    return frames


def anthropic_stream_events(model, msg_id, text_parts, input_tokens, output_tokens):
    evs = [
        ("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
    ]
    for part in text_parts:
        evs.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": part}}))
    evs += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return evs


def invoke_stream_frames(model, midstream_error=False):
    evs = anthropic_stream_events(model, "msg_bdrk_1", ["Hello from Claude", " on Bedrock"], 12, 6)
    if midstream_error:
        evs = evs[:1]
    frames = []
    for _, ev in evs:
        b = base64.b64encode(json.dumps(ev, separators=(",", ":")).encode("utf-8")).decode("ascii")
        frames.append(event_frame("chunk", {"bytes": b}))
    if midstream_error:
        frames.append(exception_frame("modelStreamErrorException",
                                      "The model encountered an error while streaming."))
    return frames


# --------------------------------------------------------------------------
# SigV4 verification with botocore
# --------------------------------------------------------------------------

class FixedTimeSigV4Auth(botocore.auth.SigV4Auth):
    """botocore's SigV4Auth, but signing at a given timestamp instead of now.

    botocore's add_auth() does
        request.context['timestamp'] = get_current_datetime().strftime(SIGV4_TIMESTAMP)
    and then _modify_request_before_signing() (re)sets X-Amz-Date and
    X-Amz-Security-Token from that context / the credentials. We replicate
    add_auth() with the timestamp fixed; everything else (canonical request,
    string to sign, signing key, Authorization header) is botocore's code.
    """

    def __init__(self, credentials, service_name, region_name, timestamp):
        super().__init__(credentials, service_name, region_name)
        self._fixed_timestamp = timestamp

    def add_auth(self, request):
        request.context["timestamp"] = self._fixed_timestamp
        self._modify_request_before_signing(request)
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        signature = self.signature(string_to_sign, request)
        self._inject_signature_to_request(request, signature)


_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-fA-F]+)\s*$"
)


class AwsAuthError(Exception):
    def __init__(self, error_type, message, status=403):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status


def verify_sigv4(method, raw_path, headers, body, cfg, now=None):
    """Verify a SigV4 signed request. headers: email.message.Message-like.
    Returns the region on success, raises AwsAuthError otherwise."""
    auth = headers.get("Authorization")
    if not auth:
        raise AwsAuthError("MissingAuthenticationTokenException", "Missing Authentication Token")
    m = _AUTH_RE.match(auth.strip())
    if not m:
        raise AwsAuthError("IncompleteSignatureException",
                           "Authorization header requires 'Credential', 'SignedHeaders' and "
                           "'Signature' parameters, with algorithm AWS4-HMAC-SHA256.")
    credential, signed_headers_str, client_sig = m.groups()
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise AwsAuthError("IncompleteSignatureException", "Credential should be scoped correctly.")
    access_key, scope_date, region, service, _ = parts
    if not cfg.aws_access_key_id or not hmac.compare_digest(
            access_key.encode(), cfg.aws_access_key_id.encode()):
        raise AwsAuthError("UnrecognizedClientException",
                           "The security token included in the request is invalid.")
    if service != "bedrock":
        raise AwsAuthError("InvalidSignatureException",
                           "Credential should be scoped to correct service: 'bedrock'.")
    amz_date = headers.get("X-Amz-Date")
    if not amz_date:
        raise AwsAuthError("IncompleteSignatureException", "Missing X-Amz-Date header.")
    try:
        ts = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise AwsAuthError("IncompleteSignatureException", "Invalid X-Amz-Date: %s" % amz_date)
    if scope_date != amz_date[:8]:
        raise AwsAuthError("InvalidSignatureException",
                           "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if abs((now - ts).total_seconds()) > MAX_CLOCK_SKEW:
        raise AwsAuthError("InvalidSignatureException",
                           "Signature expired: %s is now earlier/later than %s (+/- 5 min.)"
                           % (amz_date, now.strftime(SIGV4_TIMESTAMP)))
    signed = [h for h in signed_headers_str.lower().split(";") if h]
    if "host" not in signed or "x-amz-date" not in signed:
        raise AwsAuthError("InvalidSignatureException",
                           "'Host' and 'X-Amz-Date' must be in SignedHeaders.")
    token = headers.get("X-Amz-Security-Token")
    if cfg.aws_session_token:
        if not token or not hmac.compare_digest(token.encode(), cfg.aws_session_token.encode()):
            raise AwsAuthError("UnrecognizedClientException",
                               "The security token included in the request is invalid.")
        if "x-amz-security-token" not in signed:
            raise AwsAuthError("InvalidSignatureException", AWS_SIG_MISMATCH)
    elif token:
        raise AwsAuthError("UnrecognizedClientException",
                           "The security token included in the request is invalid.")
    # An explicit payload hash must match the body (botocore would trust it).
    content_sha = headers.get("X-Amz-Content-SHA256")
    if content_sha is not None and not hmac.compare_digest(
            content_sha.strip().lower().encode(), hashlib.sha256(body).hexdigest().encode()):
        raise AwsAuthError("InvalidSignatureException",
                           "The provided 'x-amz-content-sha256' header does not match what was computed.")

    host = headers.get("Host")
    if not host:
        raise AwsAuthError("InvalidSignatureException", "Missing Host header.")
    # Rebuild the request with only the headers the client signed.
    req_headers = {}
    areq = botocore.awsrequest.AWSRequest(method=method, url="http://%s%s" % (host, raw_path),
                                          data=body, headers=req_headers)
    for name in signed:
        values = headers.get_all(name) or []
        if not values:
            raise AwsAuthError("InvalidSignatureException",
                               "Header '%s' is listed in SignedHeaders but missing." % name)
        for v in values:
            areq.headers[name] = v  # HTTPHeaders appends on repeated set
    creds = botocore.credentials.Credentials(cfg.aws_access_key_id, cfg.aws_secret_access_key,
                                             cfg.aws_session_token or None)
    signer = FixedTimeSigV4Auth(creds, "bedrock", region, amz_date)
    signer.add_auth(areq)
    expected = areq.headers["Authorization"]
    em = _AUTH_RE.match(expected)
    exp_signed, exp_sig = em.group(2), em.group(3)
    ok_headers = hmac.compare_digest(exp_signed.encode(), signed_headers_str.lower().encode())
    ok_sig = hmac.compare_digest(exp_sig.encode(), client_sig.lower().encode())
    if not (ok_headers and ok_sig):
        raise AwsAuthError("InvalidSignatureException", AWS_SIG_MISMATCH)
    return region


# --------------------------------------------------------------------------
# Server state
# --------------------------------------------------------------------------

class State:
    def __init__(self, cfg):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.persist_lock = threading.Lock()
        self.tokens = {}  # token -> {"kind": "google"|"entra", "exp": epoch}
        self.stats = {
            "google_token_requests": 0,
            "google_token_failures": 0,
            "entra_token_requests": 0,
            "entra_token_failures": 0,
            "bedrock_requests": 0,
            "bedrock_signature_failures": 0,
            "vertex_requests": 0,
            "vertex_auth_failures": 0,
            "azure_requests": 0,
            "azure_auth_failures": 0,
            "last_bedrock_body": None,
            "last_bedrock_path": None,
            "last_vertex_body": None,
            "last_vertex_path": None,
            "last_azure_body": None,
            "last_azure_path": None,
        }

    def bump(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    def set(self, key, value):
        with self.lock:
            self.stats[key] = value

    def snapshot(self):
        with self.lock:
            return json.loads(json.dumps(self.stats))

    def issue(self, kind, token):
        with self.lock:
            self.tokens[token] = {"kind": kind, "exp": time.time() + self.cfg.token_lifetime}

    def valid(self, kind, token):
        with self.lock:
            t = self.tokens.get(token)
            return bool(t and t["kind"] == kind and t["exp"] > time.time())

    def expire_all(self):
        with self.lock:
            for t in self.tokens.values():
                t["exp"] = 0
            return len(self.tokens)

    def persist(self):
        """Write stats to the state dir (best effort, never contains secrets)."""
        if not self.cfg.state_dir:
            return
        with self.persist_lock:
            try:
                snap = self.snapshot()
                p = os.path.join(self.cfg.state_dir, "stats.json")
                tmp = p + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(snap, f)
                os.replace(tmp, p)
            except OSError:
                pass


def _split_basic(header):
    try:
        raw = base64.b64decode(header.split(None, 1)[1]).decode("utf-8")
        cid, _, sec = raw.partition(":")
        return urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(sec)
    except Exception:
        return None, None


# --------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KeywardCloudMock/1.0"
    disable_nagle_algorithm = True
    chunk_delay = 0.003

    # ---- plumbing -------------------------------------------------------
    @property
    def state(self):
        return self.server.state

    @property
    def cfg(self):
        return self.server.state.cfg

    def log_request(self, code="-", size="-"):
        path = self.path.split("?", 1)[0] if isinstance(self.path, str) else "-"
        code = getattr(code, "value", code)
        sys.stderr.write("%s %s %s\n" % (self.command, path, code))

    def log_message(self, format, *args):  # noqa: A002 - suppress other logs (may contain data)
        pass

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            return data
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, body, content_type="application/json", headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        elif isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _start_chunked(self, content_type, headers=None):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _chunk(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data:
            return
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        self.wfile.flush()
        if self.chunk_delay:
            time.sleep(self.chunk_delay)

    def _end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json_body(self):
        try:
            v = json.loads(self.body.decode("utf-8")) if self.body else None
        except (ValueError, UnicodeDecodeError):
            return None
        return v

    # ---- dispatch -------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        self.body = self._read_body()
        split = urllib.parse.urlsplit(self.path)
        self.raw_path = split.path
        self.query = urllib.parse.parse_qs(split.query)
        p = split.path
        try:
            if p == "/_mock/stats" and self.command == "GET":
                return self._send(200, self.state.snapshot())
            if p == "/_mock/expire-tokens" and self.command == "POST":
                n = self.state.expire_all()
                return self._send(200, {"expired": n})
            if p.startswith("/model/") or p == "/foundation-models" or p.startswith("/foundation-models/"):
                return self._bedrock(p)
            if p == "/token":
                return self._google_token()
            if p.startswith("/v1/projects/") or p.startswith("/v1beta1/"):
                return self._vertex(p)
            m = re.match(r"^/([^/]+)/oauth2/v2\.0/token$", p)
            if m:
                return self._entra_token(urllib.parse.unquote(m.group(1)))
            if p.startswith("/openai/"):
                return self._azure(p)
            return self._send(404, {"error": {"code": 404, "message": "Not found: %s" % p}})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # never leak request data/secrets: type name only
            sys.stderr.write("mock internal error: %s\n" % type(e).__name__)
            self.close_connection = True
            try:
                self._send(500, {"message": "mock internal error"})
            except Exception:
                pass
        finally:
            self.state.persist()

    # ---- AWS Bedrock ----------------------------------------------------
    def _aws_error(self, status, error_type, message):
        self._send(status, {"message": message}, headers={"x-amzn-ErrorType": error_type,
                                                          "x-amzn-RequestId": secrets.token_hex(16)})

    def _bedrock(self, p):
        st = self.state
        st.bump("bedrock_requests")
        try:
            verify_sigv4(self.command, self.path, self.headers, self.body, self.cfg)
        except AwsAuthError as e:
            st.bump("bedrock_signature_failures")
            return self._aws_error(e.status, e.error_type, e.message)

        if p == "/foundation-models":
            if self.command != "GET":
                return self._aws_error(405, "ValidationException", "Method not allowed")
            return self._send(200, {"modelSummaries": BEDROCK_MODELS})

        m = re.match(r"^/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)$", p)
        if not m or self.command != "POST":
            return self._aws_error(404, "UnknownOperationException", "Unknown operation")
        model_id = urllib.parse.unquote(m.group(1))
        op = m.group(2)
        body = self._json_body()
        st.set("last_bedrock_body", body)
        st.set("last_bedrock_path", "/model/%s/%s" % (model_id, op))
        if not isinstance(body, dict):
            return self._aws_error(400, "ValidationException", "Malformed input request: body is not a JSON object")
        if "throttle" in model_id:
            return self._aws_error(429, "ThrottlingException", "Too many requests")
        if op in ("converse", "converse-stream"):
            err = validate_converse(body)
            if err:
                return self._aws_error(400, "ValidationException", err)
            if op == "converse":
                return self._send(200, converse_response(body))
            frames = converse_stream_frames("midstream-error" in model_id)
            return self._stream_frames(frames)
        # Anthropic on Bedrock
        err = validate_anthropic(body, "bedrock-2023-05-31")
        if err:
            return self._aws_error(400, "ValidationException", err)
        if op == "invoke":
            return self._send(200, {
                "id": "msg_bdrk_1", "type": "message", "role": "assistant", "model": model_id,
                "content": [{"type": "text", "text": "Hello from Claude on Bedrock"}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 6}})
        return self._stream_frames(invoke_stream_frames(model_id, "midstream-error" in model_id))

    def _stream_frames(self, frames):
        self._start_chunked("application/vnd.amazon.eventstream",
                            {"x-amzn-RequestId": secrets.token_hex(16)})
        for f in frames:
            # split every frame so the client sees partial preludes/payloads
            cuts = sorted({0, 5, len(f) // 2, len(f)})
            for a, b in zip(cuts, cuts[1:]):
                self._chunk(f[a:b])
        self._end_chunked()

    # ---- Google token endpoint -----------------------------------------
    def _google_error(self, desc, error="invalid_grant"):
        self.state.bump("google_token_failures")
        return self._send(400, {"error": error, "error_description": desc})

    def _google_token(self):
        st = self.state
        cfg = self.cfg
        st.bump("google_token_requests")
        if self.command != "POST":
            return self._google_error("Method not allowed", "invalid_request")
        form = urllib.parse.parse_qs(self.body.decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != JWT_BEARER_GRANT:
            return self._google_error("Invalid grant_type: %s" % form.get("grant_type", [""])[0],
                                      "unsupported_grant_type")
        assertion = form.get("assertion", [""])[0]
        if not assertion:
            return self._google_error("Missing required parameter: assertion", "invalid_request")
        if not cfg.google_public_key_pem:
            return self._google_error("Invalid JWT Signature.")
        import google.auth.exceptions
        import google.auth.jwt
        import jwt as pyjwt
        try:
            header = pyjwt.get_unverified_header(assertion)
        except Exception:
            return self._google_error("Invalid JWT: malformed token.")
        if header.get("alg") != "RS256":
            return self._google_error("Invalid JWT Signature.")
        host = self.headers.get("Host") or "127.0.0.1:%d" % self.server.server_port
        # The mock's own token URL, plus Google's canonical token endpoint: google-auth's
        # service_account.Credentials always uses aud=https://oauth2.googleapis.com/token,
        # whatever token_uri is, and real Google accepts that.
        audiences = sorted({"http://%s/token" % host,
                            "http://127.0.0.1:%d/token" % self.server.server_port,
                            "http://localhost:%d/token" % self.server.server_port,
                            "https://oauth2.googleapis.com/token",
                            "https://www.googleapis.com/oauth2/v4/token"})
        try:
            claims = google.auth.jwt.decode(assertion, certs=cfg.google_public_key_pem,
                                            audience=audiences, clock_skew_in_seconds=60)
        except (google.auth.exceptions.GoogleAuthError, ValueError) as e:
            msg = str(e)
            if "audience" in msg.lower():
                return self._google_error("Invalid JWT: Token must be a short-lived token (60 minutes) "
                                          "and in a reasonable timeframe. Check your iat and exp values "
                                          "in the JWT claim. (aud mismatch)")
            if "expired" in msg.lower() or "too early" in msg.lower() or "iat" in msg.lower():
                return self._google_error("Invalid JWT: Token must be a short-lived token (60 minutes) "
                                          "and in a reasonable timeframe. Check your iat and exp values "
                                          "in the JWT claim.")
            return self._google_error("Invalid JWT Signature.")
        now = time.time()
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] <= now:
            return self._google_error("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                                      "reasonable timeframe. Check your iat and exp values in the JWT claim.")
        if not isinstance(claims.get("iat"), (int, float)) or claims["iat"] > now + 60:
            return self._google_error("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                                      "reasonable timeframe. Check your iat and exp values in the JWT claim.")
        if claims["exp"] - claims["iat"] > 3600:
            return self._google_error("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                                      "reasonable timeframe. Check your iat and exp values in the JWT claim.")
        iss = claims.get("iss") or ""
        if not cfg.google_client_email or not hmac.compare_digest(iss.encode(), cfg.google_client_email.encode()):
            return self._google_error("Invalid grant: account not found")
        scopes = str(claims.get("scope") or "").split()
        if CLOUD_PLATFORM_SCOPE not in scopes:
            return self._google_error("Invalid OAuth scope or ID token audience provided.", "invalid_scope")
        token = "ya29." + secrets.token_urlsafe(48)
        st.issue("google", token)
        return self._send(200, {"access_token": token, "expires_in": cfg.token_lifetime,
                                "token_type": "Bearer"})

    # ---- Vertex AI ------------------------------------------------------
    def _bearer(self):
        a = self.headers.get("Authorization") or ""
        if a[:7].lower() == "bearer ":
            return a[7:].strip()
        return None

    def _vertex(self, p):
        st = self.state
        st.bump("vertex_requests")
        tok = self._bearer()
        if not tok or not st.valid("google", tok):
            st.bump("vertex_auth_failures")
            return self._send(401, {"error": {
                "code": 401,
                "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                           "login cookie or other valid authentication credential. See "
                           "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                "status": "UNAUTHENTICATED"}}, headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})

        def not_found():
            return self._send(404, {"error": {"code": 404, "message": "Requested entity was not found.",
                                              "status": "NOT_FOUND"}})

        def bad(msg):
            return self._send(400, {"error": {"code": 400, "message": msg, "status": "INVALID_ARGUMENT"}})

        if self.command == "GET":
            if re.match(r"^/v1/projects/[^/]+/locations/[^/]+/publishers/google/models$", p) or \
                    p == "/v1beta1/publishers/google/models":
                return self._send(200, {"publisherModels": VERTEX_GOOGLE_MODELS})
            return not_found()

        body = self._json_body()
        m = re.match(r"^/v1/projects/([^/]+)/locations/([^/]+)/endpoints/openapi/chat/completions$", p)
        if m:
            st.set("last_vertex_body", body)
            st.set("last_vertex_path", p)
            if not isinstance(body, dict):
                return bad("Invalid JSON payload received.")
            if not isinstance(body.get("model"), str) or not body["model"]:
                return bad("model is required")
            err = validate_openai_chat(body)
            if err:
                return bad(err)
            return self._openai_reply(body, body["model"], "Hello from Gemini on Vertex", 9, 4, azure=False)

        m = re.match(r"^/v1/projects/([^/]+)/locations/([^/]+)/publishers/anthropic/models/([^/]+)$", p)
        if m:
            st.set("last_vertex_body", body)
            st.set("last_vertex_path", urllib.parse.unquote(p))
            model, _, method = urllib.parse.unquote(m.group(3)).rpartition(":")
            if method not in ("rawPredict", "streamRawPredict") or not model:
                return not_found()
            if not isinstance(body, dict):
                return bad("Invalid JSON payload received.")
            err = validate_anthropic(body, "vertex-2023-10-16")
            if err:
                return self._send(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                   "message": err}})
            if method == "rawPredict":
                return self._send(200, {
                    "id": "msg_vrtx_1", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": "Hello from Claude on Vertex"}],
                    "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 5}})
            self._start_chunked("text/event-stream")
            for name, ev in anthropic_stream_events(model, "msg_vrtx_1",
                                                    ["Hello from Claude", " on Vertex"], 10, 5):
                if name == "message_delta":
                    self._chunk("event: ping\ndata: {\"type\": \"ping\"}\n\n")
                self._chunk("event: %s\ndata: %s\n\n" % (name, json.dumps(ev)))
            return self._end_chunked()
        return not_found()

    # ---- Entra ID token endpoint ---------------------------------------
    def _entra_error(self, status, error, desc, codes):
        self.state.bump("entra_token_failures")
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        return self._send(status, {
            "error": error, "error_description": desc + "\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s"
            % (secrets.token_hex(8), secrets.token_hex(8), now),
            "error_codes": codes, "timestamp": now,
            "trace_id": secrets.token_hex(8), "correlation_id": secrets.token_hex(8)})

    def _entra_token(self, tenant):
        st = self.state
        cfg = self.cfg
        st.bump("entra_token_requests")
        if self.command != "POST":
            return self._entra_error(405, "invalid_request", "AADSTS900561: The endpoint only accepts POST requests.", [900561])
        if not cfg.entra_tenant or not hmac.compare_digest(tenant.encode(), cfg.entra_tenant.encode()):
            return self._entra_error(400, "invalid_request",
                                     "AADSTS90002: Tenant '%s' not found. Check to make sure you have the correct "
                                     "tenant ID and are signing into the correct cloud." % tenant, [90002])
        form = urllib.parse.parse_qs(self.body.decode("utf-8", "replace"))
        g = lambda k: form.get(k, [""])[0]  # noqa: E731
        if g("grant_type") != "client_credentials":
            return self._entra_error(400, "unsupported_grant_type",
                                     "AADSTS70003: The app requested an unsupported grant type.", [70003])
        client_id, client_secret = g("client_id"), g("client_secret")
        auth = self.headers.get("Authorization") or ""
        if auth[:6].lower() == "basic ":
            bid, bsec = _split_basic(auth)
            client_id = client_id or (bid or "")
            client_secret = client_secret or (bsec or "")
        if not client_id:
            return self._entra_error(400, "invalid_request",
                                     "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
                                     [900144])
        if not hmac.compare_digest(client_id.encode(), (cfg.entra_client_id or "").encode()):
            return self._entra_error(400, "unauthorized_client",
                                     "AADSTS700016: Application with identifier '%s' was not found in the "
                                     "directory." % client_id, [700016])
        if not client_secret:
            return self._entra_error(401, "invalid_client",
                                     "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is "
                                     "required for the 'client_credentials' grant type.", [7000216])
        if not hmac.compare_digest(client_secret.encode(), (cfg.entra_client_secret or "").encode()):
            return self._entra_error(401, "invalid_client",
                                     "AADSTS7000215: Invalid client secret provided. Ensure the secret being "
                                     "sent in the request is the client secret value, not the client secret "
                                     "ID", [7000215])
        if g("scope") != ENTRA_SCOPE:
            return self._entra_error(400, "invalid_scope",
                                     "AADSTS70011: The provided request must include a 'scope' input parameter. "
                                     "The provided value for the input parameter 'scope' is not valid. The "
                                     "scope %s is not valid." % g("scope"), [70011])
        token = "eyJ0eXAi." + secrets.token_urlsafe(64)
        st.issue("entra", token)
        return self._send(200, {"token_type": "Bearer", "expires_in": cfg.token_lifetime,
                                "ext_expires_in": cfg.token_lifetime, "access_token": token})

    # ---- Azure OpenAI ---------------------------------------------------
    def _azure(self, p):
        st = self.state
        st.bump("azure_requests")
        if self.headers.get("api-key") is not None:
            st.bump("azure_auth_failures")
            return self._send(401, {"error": {"code": "401", "message": "Access denied due to invalid "
                                              "subscription key or wrong API endpoint. Make sure to provide a "
                                              "valid key for an active subscription and use a correct regional "
                                              "API endpoint for your resource."}})
        tok = self._bearer()
        if not tok or not st.valid("entra", tok):
            st.bump("azure_auth_failures")
            return self._send(401, {"error": {"code": "401", "message": "Unauthorized. Access token is missing, "
                                              "invalid, audience is incorrect (https://cognitiveservices.azure.com),"
                                              " or have expired."}})
        if not self.query.get("api-version", [""])[0]:
            return self._send(404, {"error": {"code": "404", "message": "Resource not found"}})
        if p == "/openai/models" and self.command == "GET":
            return self._send(200, {"object": "list", "data": [
                {"id": "gpt-4o", "object": "model", "created_at": 1715558400, "status": "succeeded",
                 "capabilities": {"chat_completion": True, "completion": False, "embeddings": False},
                 "lifecycle_status": "generally-available"}]})
        m = re.match(r"^/openai/deployments/([^/]+)/chat/completions$", p)
        if m and self.command == "POST":
            body = self._json_body()
            st.set("last_azure_body", body)
            st.set("last_azure_path", p)
            if not isinstance(body, dict):
                return self._send(400, {"error": {"code": "BadRequest", "message": "Invalid JSON body"}})
            err = validate_openai_chat(body)
            if err:
                return self._send(400, {"error": {"code": "BadRequest", "message": err, "param": "messages",
                                                  "type": "invalid_request_error"}})
            return self._openai_reply(body, "gpt-4o-2024-08-06", "Hello from Azure with Entra ID", 9, 6, azure=True)
        return self._send(404, {"error": {"code": "404", "message": "Resource not found"}})

    # ---- OpenAI-shaped replies (Vertex openapi + Azure) ----------------
    def _openai_reply(self, body, model, text, ptok, ctok, azure):
        cid = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        usage = {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok}
        if not body.get("stream"):
            msg = {"role": "assistant", "content": text}
            return self._send(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": msg, "finish_reason": "stop", "logprobs": None}],
                "usage": usage, "system_fingerprint": "fp_mock"})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._start_chunked("text/event-stream")

        def chunk(choices, **extra):
            d = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices}
            d.update(extra)
            self._chunk("data: %s\n\n" % json.dumps(d))

        if azure:
            # Azure sends a content-filter preamble chunk with empty choices first.
            self._chunk("data: %s\n\n" % json.dumps({
                "choices": [], "created": 0, "id": "", "model": "", "object": "",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}))
        half = len(text) // 2
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        chunk([{"index": 0, "delta": {"content": text[:half]}, "finish_reason": None}])
        chunk([{"index": 0, "delta": {"content": text[half:]}, "finish_reason": None}])
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if include_usage:
            chunk([], usage=usage)
        self._chunk("data: [DONE]\n\n")
        self._end_chunked()


# --------------------------------------------------------------------------
# Request validation / canned responses
# --------------------------------------------------------------------------

def _roles_alternate(messages):
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    expected = "user"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return "messages[%d] must be an object" % i
        if m.get("role") != expected:
            return ("A conversation must alternate between user and assistant roles and start with a "
                    "user message (messages[%d].role=%r)" % (i, m.get("role")))
        expected = "assistant" if expected == "user" else "user"
    return None


def validate_converse(body):
    err = _roles_alternate(body.get("messages"))
    if err:
        return err
    for i, m in enumerate(body["messages"]):
        if not isinstance(m.get("content"), list) or not m["content"]:
            return "messages[%d].content must be a non-empty list of content blocks" % i
    if "system" in body and not isinstance(body["system"], list):
        return "system must be a list of system content blocks"
    if "inferenceConfig" in body and not isinstance(body["inferenceConfig"], dict):
        return "inferenceConfig must be an object"
    tc = body.get("toolConfig")
    if tc is not None:
        if not isinstance(tc, dict) or not isinstance(tc.get("tools"), list) or not tc["tools"]:
            return "toolConfig.tools must be a non-empty list"
        for t in tc["tools"]:
            if not isinstance(t, dict) or not isinstance(t.get("toolSpec"), dict) or \
                    not t["toolSpec"].get("name"):
                return "toolConfig.tools[].toolSpec.name is required"
    return None


def _last_user_text(messages):
    for m in reversed(messages):
        if m.get("role") == "user":
            out = []
            for c in m.get("content") or []:
                if isinstance(c, dict) and isinstance(c.get("text"), str):
                    out.append(c["text"])
                elif isinstance(c, str):
                    out.append(c)
            return " ".join(out)
    return ""


def converse_response(body):
    usage = {"inputTokens": 11, "outputTokens": 5, "totalTokens": 16}
    tc = body.get("toolConfig")
    if tc and "weather" in _last_user_text(body["messages"]).lower():
        name = tc["tools"][0]["toolSpec"]["name"]
        return {"output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "tooluse_1", "name": name, "input": {"city": "Paris"}}}]}},
            "stopReason": "tool_use", "usage": usage, "metrics": {"latencyMs": 42}}
    return {"output": {"message": {"role": "assistant", "content": [{"text": "Hello from Bedrock"}]}},
            "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 42}}


def validate_anthropic(body, version):
    if "model" in body:
        return "model: Extra inputs are not permitted"
    if body.get("anthropic_version") != version:
        return "anthropic_version: must be %r (got %r)" % (version, body.get("anthropic_version"))
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    err = _roles_alternate(body.get("messages"))
    if err:
        return "messages: " + err
    return None


def validate_openai_chat(body):
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "'messages' is a required property and must be a non-empty array"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            return "Invalid value for 'messages[%d].role'" % i
    return None


# --------------------------------------------------------------------------
# Config / main
# --------------------------------------------------------------------------

class Config:
    def __init__(self, **kw):
        self.aws_access_key_id = None
        self.aws_secret_access_key = None
        self.aws_session_token = None
        self.google_public_key_pem = None
        self.google_client_email = None
        self.entra_tenant = None
        self.entra_client_id = None
        self.entra_client_secret = None
        self.token_lifetime = 3600
        self.state_dir = None
        self.__dict__.update(kw)


def make_server(cfg, port=0):
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    srv.state = State(cfg)
    return srv


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Keyward cloud mock (Bedrock / Vertex / Azure+Entra)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--state-dir")
    ap.add_argument("--aws-access-key-id")
    ap.add_argument("--aws-secret-access-key")
    ap.add_argument("--aws-session-token")
    ap.add_argument("--google-public-key", help="PEM file: RSA public key or X.509 certificate")
    ap.add_argument("--google-client-email")
    ap.add_argument("--entra-tenant")
    ap.add_argument("--entra-client-id")
    ap.add_argument("--entra-client-secret")
    ap.add_argument("--token-lifetime", type=int, default=3600)
    ap.add_argument("--self-test", action="store_true")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        return self_test()
    pem = None
    if args.google_public_key:
        with open(args.google_public_key, "rb") as f:
            pem = f.read()
    if args.state_dir:
        os.makedirs(args.state_dir, exist_ok=True)
    cfg = Config(aws_access_key_id=args.aws_access_key_id, aws_secret_access_key=args.aws_secret_access_key,
                 aws_session_token=args.aws_session_token, google_public_key_pem=pem,
                 google_client_email=args.google_client_email, entra_tenant=args.entra_tenant,
                 entra_client_id=args.entra_client_id, entra_client_secret=args.entra_client_secret,
                 token_lifetime=args.token_lifetime, state_dir=args.state_dir)
    srv = make_server(cfg, args.port)
    port = srv.server_address[1]
    if args.state_dir:
        with open(os.path.join(args.state_dir, "port"), "w") as f:
            f.write(str(port))
        with open(os.path.join(args.state_dir, "pid"), "w") as f:
            f.write(str(os.getpid()))
    sys.stdout.write("LISTENING %d\n" % port)
    sys.stdout.flush()
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


# --------------------------------------------------------------------------
# Self-test (botocore / google-auth act as the clients)
# --------------------------------------------------------------------------

def self_test():  # noqa: C901 - linear list of checks
    import tempfile
    import urllib.error
    import urllib.request

    import botocore.eventstream
    import google.auth.exceptions
    import google.auth.transport.requests
    import google.oauth2.service_account
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    results = []

    def check(name, cond, detail=""):
        results.append(bool(cond))
        print("%s %s%s" % ("PASS" if cond else "FAIL", name, "" if cond else "  -- " + repr(detail)[:500]))
        sys.stdout.flush()

    def gen_key():
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        priv = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()
        pub = k.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
        return priv, pub

    priv, pub = gen_key()
    other_priv, _ = gen_key()
    AK, SK, TOK = "AKIAMOCKTEST00000001", "mock/secret+key/" + secrets.token_hex(8), "mock-session-" + secrets.token_hex(8)
    EMAIL = "keyward-test@mock-project.iam.gserviceaccount.com"
    TENANT, CID, CSEC = "11111111-2222-3333-4444-555555555555", "app-" + secrets.token_hex(4), "sec~" + secrets.token_hex(12)
    state_dir = tempfile.mkdtemp(prefix="cloud-mock-")
    cfg = Config(aws_access_key_id=AK, aws_secret_access_key=SK, aws_session_token=TOK,
                 google_public_key_pem=pub, google_client_email=EMAIL, entra_tenant=TENANT,
                 entra_client_id=CID, entra_client_secret=CSEC, token_lifetime=3600, state_dir=state_dir)
    srv = make_server(cfg, 0)
    port = srv.server_address[1]
    base = "http://127.0.0.1:%d" % port
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def http(method, url, data=None, headers=None):
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def jget(body):
        try:
            return json.loads(body)
        except Exception:
            return None

    def aws_call(method, path, body=None, ak=AK, sk=SK, token=TOK, tamper=None, region="us-east-1",
                 signer_cls=None):
        url = base + path
        data = json.dumps(body).encode() if body is not None else b""
        req = botocore.awsrequest.AWSRequest(method=method, url=url, data=data,
                                             headers={"Content-Type": "application/json"} if body is not None else {})
        creds = botocore.credentials.Credentials(ak, sk, token)
        signer = signer_cls(creds, "bedrock", region) if signer_cls else botocore.auth.SigV4Auth(creds, "bedrock", region)
        signer.add_auth(req)
        hdrs = dict(req.headers.items())
        if tamper:
            data = tamper(data)
        return http(method, url, data=data if method != "GET" else None, headers=hdrs)

    def decode_es(raw):
        buf = botocore.eventstream.EventStreamBuffer()
        buf.add_data(raw)
        return list(buf)

    # ---- event-stream encoder vs botocore parser (no network) ----
    try:
        for frames in (converse_stream_frames(), converse_stream_frames(True),
                       invoke_stream_frames("m"), invoke_stream_frames("m", True)):
            msgs = decode_es(b"".join(frames))
            assert len(msgs) == len(frames)
            for m in msgs:
                assert m.headers[":message-type"] in ("event", "exception")
                json.loads(m.payload)
        # feed byte by byte too
        buf = botocore.eventstream.EventStreamBuffer()
        n = 0
        for b in b"".join(converse_stream_frames()):
            buf.add_data(bytes([b]))
            n += len(list(buf))
        check("eventstream encoder decodes with botocore EventStreamBuffer", n == 6)
    except Exception as e:  # pragma: no cover
        check("eventstream encoder decodes with botocore EventStreamBuffer", False, repr(e))

    conv = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "system": [{"text": "be nice"}], "inferenceConfig": {"maxTokens": 100}}
    model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    enc_model = urllib.parse.quote(model, safe="")

    # ---- Bedrock, signed by botocore ----
    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, conv)
    j = jget(b)
    check("bedrock converse (model id %3A-encoded) 200", s == 200 and j["output"]["message"]["content"][0]["text"]
          == "Hello from Bedrock" and j["usage"]["totalTokens"] == 16, (s, b[:200]))
    s, h, b = aws_call("POST", "/model/%s/converse" % model, conv)
    check("bedrock converse (model id with raw ':') 200", s == 200, (s, b[:200]))
    st = jget(http("GET", base + "/_mock/stats")[2])
    check("stats last_bedrock_body recorded", st["last_bedrock_body"] == conv, st.get("last_bedrock_body"))

    tool_req = dict(conv, messages=[{"role": "user", "content": [{"text": "What's the weather in Paris?"}]}],
                    toolConfig={"tools": [{"toolSpec": {"name": "get_weather", "description": "w",
                                                        "inputSchema": {"json": {"type": "object"}}}}]})
    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, tool_req)
    j = jget(b)
    check("bedrock converse toolUse", s == 200 and j["stopReason"] == "tool_use" and
          j["output"]["message"]["content"][0]["toolUse"]["name"] == "get_weather", (s, b[:300]))

    bad = {"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}
    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, bad)
    check("bedrock converse bad roles -> 400 ValidationException",
          s == 400 and h.get("x-amzn-ErrorType") == "ValidationException", (s, h.get("x-amzn-ErrorType")))

    s, h, b = aws_call("POST", "/model/%s/converse-stream" % enc_model, conv)
    try:
        msgs = decode_es(b)
        evs = [(m.headers[":event-type"], json.loads(m.payload)) for m in msgs]
        names = [e[0] for e in evs]
        text = "".join(p["delta"]["text"] for n, p in evs if n == "contentBlockDelta")
        ok = (s == 200 and h.get("Content-Type") == "application/vnd.amazon.eventstream" and
              names == ["messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop",
                        "messageStop", "metadata"] and text == "Hello from Bedrock" and
              evs[-1][1]["usage"]["totalTokens"] == 16 and
              all(m.headers[":content-type"] == "application/json" and m.headers[":message-type"] == "event"
                  for m in msgs))
        check("bedrock converse-stream frames decoded by botocore", ok, (s, names, text))
    except Exception as e:
        check("bedrock converse-stream frames decoded by botocore", False, repr(e))

    s, h, b = aws_call("POST", "/model/%s/converse-stream" % urllib.parse.quote("x.midstream-error-v1:0", safe=""), conv)
    try:
        msgs = decode_es(b)
        ok = (s == 200 and len(msgs) == 2 and msgs[0].headers[":event-type"] == "messageStart" and
              msgs[1].headers[":message-type"] == "exception" and
              msgs[1].headers[":exception-type"] == "modelStreamErrorException")
        check("bedrock converse-stream midstream exception frame", ok, [m.headers for m in msgs])
    except Exception as e:
        check("bedrock converse-stream midstream exception frame", False, repr(e))

    inv = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
           "messages": [{"role": "user", "content": "Hi"}]}
    s, h, b = aws_call("POST", "/model/%s/invoke" % enc_model, inv)
    j = jget(b)
    check("bedrock invoke (anthropic) 200", s == 200 and j["model"] == model and
          j["content"][0]["text"] == "Hello from Claude on Bedrock", (s, b[:200]))
    s, h, b = aws_call("POST", "/model/%s/invoke" % enc_model, dict(inv, model=model))
    check("bedrock invoke with 'model' -> 400", s == 400, (s, b[:200]))
    s, h, b = aws_call("POST", "/model/%s/invoke" % enc_model, {k: v for k, v in inv.items() if k != "anthropic_version"})
    check("bedrock invoke without anthropic_version -> 400", s == 400, (s, b[:200]))

    s, h, b = aws_call("POST", "/model/%s/invoke-with-response-stream" % enc_model, inv)
    try:
        msgs = decode_es(b)
        evs = [json.loads(base64.b64decode(json.loads(m.payload)["bytes"])) for m in msgs]
        types = [e["type"] for e in evs]
        text = "".join(e["delta"]["text"] for e in evs if e["type"] == "content_block_delta")
        ok = (s == 200 and all(m.headers[":event-type"] == "chunk" for m in msgs) and
              types == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                        "content_block_stop", "message_delta", "message_stop"] and
              text == "Hello from Claude on Bedrock" and evs[0]["message"]["usage"]["input_tokens"] == 12 and
              evs[5]["usage"]["output_tokens"] == 6)
        check("bedrock invoke-with-response-stream chunks", ok, (s, types, text))
    except Exception as e:
        check("bedrock invoke-with-response-stream chunks", False, repr(e))

    # raw wire check: chunked transfer encoding, frames split across chunks
    import socket
    rq = botocore.awsrequest.AWSRequest(method="POST", url=base + "/model/%s/converse-stream" % enc_model,
                                        data=json.dumps(conv).encode(), headers={"Content-Type": "application/json"})
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(AK, SK, TOK), "bedrock", "us-east-1").add_auth(rq)
    raw = ("POST /model/%s/converse-stream HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n"
           % (enc_model, len(rq.body))).encode()
    raw += b"".join(("%s: %s\r\n" % (k, v)).encode() for k, v in rq.headers.items() if k.lower() != "content-length")
    if "host" not in [k.lower() for k in rq.headers.keys()]:
        raw += ("Host: 127.0.0.1:%d\r\n" % port).encode()
    raw += b"\r\n" + rq.body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        resp = b""
        while True:
            d = sock.recv(65536)
            if not d:
                break
            resp += d
    head, _, rest = resp.partition(b"\r\n\r\n")
    nchunks, dechunked = 0, b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        dechunked += rest[:size]
        rest = rest[size + 2:]
        nchunks += 1
    check("converse-stream uses chunked encoding, frames split over many chunks",
          b"transfer-encoding: chunked" in head.lower() and nchunks >= 12 and len(decode_es(dechunked)) == 6,
          (head[:80], nchunks))

    s, h, b = aws_call("GET", "/foundation-models")
    j = jget(b)
    check("bedrock foundation-models (GET, signed)", s == 200 and
          [m["modelId"] for m in j["modelSummaries"]][0] == model, (s, b[:200]))
    s, h, b = aws_call("GET", "/foundation-models?byOutputModality=TEXT&byProvider=Anthropic")
    check("bedrock foundation-models with query string", s == 200, (s, b[:200]))

    s, h, b = aws_call("POST", "/model/%s/converse" % urllib.parse.quote("x.throttle-v1:0", safe=""), conv)
    check("bedrock throttle -> 429 ThrottlingException",
          s == 429 and h.get("x-amzn-ErrorType") == "ThrottlingException", (s, h.get("x-amzn-ErrorType")))

    before = jget(http("GET", base + "/_mock/stats")[2])["bedrock_signature_failures"]
    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, conv,
                       tamper=lambda d: d.replace(b"Hi", b"Ho"))
    check("bedrock tampered body -> 403 InvalidSignatureException",
          s == 403 and h.get("x-amzn-ErrorType") == "InvalidSignatureException", (s, b[:200]))
    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, conv, sk="wrong-secret")
    check("bedrock wrong secret -> 403 InvalidSignatureException",
          s == 403 and h.get("x-amzn-ErrorType") == "InvalidSignatureException", (s, b[:200]))
    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, conv, ak="AKIAUNKNOWN000000000")
    check("bedrock unknown key id -> 403 UnrecognizedClientException",
          s == 403 and h.get("x-amzn-ErrorType") == "UnrecognizedClientException", (s, b[:200]))
    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, conv, token="wrong-token")
    check("bedrock wrong session token -> 403", s == 403, (s, b[:200]))
    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, conv, region="eu-west-3")
    check("bedrock region taken from credential scope (eu-west-3) -> 200", s == 200, (s, b[:200]))

    class OldSigner(FixedTimeSigV4Auth):
        def __init__(self, c, s_, r):
            old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
            super().__init__(c, s_, r, old.strftime(SIGV4_TIMESTAMP))

    s, h, b = aws_call("POST", "/model/%s/converse" % enc_model, conv, signer_cls=OldSigner)
    check("bedrock date 10 min old -> 403 InvalidSignatureException",
          s == 403 and h.get("x-amzn-ErrorType") == "InvalidSignatureException", (s, b[:200]))
    # path changed after signing (': ' vs '%3A' are different canonical paths)
    url_enc = base + "/model/%s/converse" % enc_model
    req = botocore.awsrequest.AWSRequest(method="POST", url=url_enc, data=json.dumps(conv).encode(),
                                         headers={"Content-Type": "application/json"})
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(AK, SK, TOK), "bedrock", "us-east-1").add_auth(req)
    s, h, b = http("POST", base + "/model/%s/converse" % model, data=json.dumps(conv).encode(),
                   headers=dict(req.headers.items()))
    check("bedrock signed for %3A path but sent raw ':' -> 403", s == 403, (s, b[:200]))
    s, h, b = http("POST", url_enc, data=json.dumps(conv).encode(), headers={"Content-Type": "application/json"})
    check("bedrock unsigned -> 403", s == 403, (s, b[:200]))
    after = jget(http("GET", base + "/_mock/stats")[2])["bedrock_signature_failures"]
    check("stats bedrock_signature_failures counted", after - before == 7, (before, after))

    # ---- Google token endpoint + Vertex, client = google-auth ----
    sa_info = {"type": "service_account", "project_id": "mock-project", "private_key_id": secrets.token_hex(20),
               "private_key": priv, "client_email": EMAIL, "client_id": "1234567890",
               "token_uri": base + "/token"}
    gcreds = google.oauth2.service_account.Credentials.from_service_account_info(
        sa_info, scopes=[CLOUD_PLATFORM_SCOPE])
    greq = google.auth.transport.requests.Request()
    try:
        gcreds.refresh(greq)
        check("google-auth service account token refresh", gcreds.token.startswith("ya29.") and gcreds.valid,
              gcreds.token[:8])
    except Exception as e:
        check("google-auth service account token refresh", False, repr(e))

    bad_info = dict(sa_info, private_key=other_priv)
    bcreds = google.oauth2.service_account.Credentials.from_service_account_info(bad_info, scopes=[CLOUD_PLATFORM_SCOPE])
    try:
        bcreds.refresh(greq)
        check("google JWT signed with another key -> 400 invalid_grant", False, "refresh succeeded")
    except google.auth.exceptions.RefreshError as e:
        check("google JWT signed with another key -> 400 invalid_grant", "invalid_grant" in str(e), str(e))
    ncreds = google.oauth2.service_account.Credentials.from_service_account_info(
        sa_info, scopes=["https://www.googleapis.com/auth/userinfo.email"])
    try:
        ncreds.refresh(greq)
        check("google JWT without cloud-platform scope -> 400", False, "refresh succeeded")
    except google.auth.exceptions.RefreshError:
        check("google JWT without cloud-platform scope -> 400", True)
    wcreds = google.oauth2.service_account.Credentials.from_service_account_info(
        dict(sa_info, client_email="someone-else@x.iam.gserviceaccount.com"), scopes=[CLOUD_PLATFORM_SCOPE])
    try:
        wcreds.refresh(greq)
        check("google JWT with wrong iss -> 400", False, "refresh succeeded")
    except google.auth.exceptions.RefreshError:
        check("google JWT with wrong iss -> 400", True)

    import jwt as pyjwt

    def jwt_grant(claims, key=priv):
        a = pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": sa_info["private_key_id"]})
        form = urllib.parse.urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": a}).encode()
        return http("POST", base + "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})

    now_i = int(time.time())
    good_claims = {"iss": EMAIL, "scope": CLOUD_PLATFORM_SCOPE, "aud": base + "/token", "iat": now_i, "exp": now_i + 3600}
    s, h, b = jwt_grant(good_claims)
    check("google PyJWT assertion with aud=<mock>/token -> 200", s == 200 and jget(b)["access_token"].startswith("ya29."),
          (s, b[:200]))
    s, h, b = jwt_grant(dict(good_claims, iat=now_i - 7200, exp=now_i - 3600))
    check("google expired JWT -> 400 invalid_grant", s == 400 and jget(b)["error"] == "invalid_grant", (s, b[:200]))
    s, h, b = jwt_grant(dict(good_claims, iat=now_i + 300, exp=now_i + 3900))
    check("google JWT iat 5 min in the future -> 400", s == 400, (s, b[:200]))
    s, h, b = jwt_grant(dict(good_claims, aud="https://example.com/token"))
    check("google JWT wrong aud -> 400", s == 400, (s, b[:200]))

    def gh():
        return {"Authorization": "Bearer " + gcreds.token, "Content-Type": "application/json"}

    vbase = base + "/v1/projects/mock-project/locations/us-central1"
    oa = {"model": "google/gemini-2.0-flash-001", "messages": [{"role": "user", "content": "Hi"}]}
    s, h, b = http("POST", vbase + "/endpoints/openapi/chat/completions", json.dumps(oa).encode(), gh())
    j = jget(b)
    check("vertex openapi chat completions", s == 200 and j["choices"][0]["message"]["content"] ==
          "Hello from Gemini on Vertex" and j["usage"]["prompt_tokens"] == 9 and j["model"] == oa["model"], (s, b[:200]))
    s, h, b = http("POST", vbase + "/endpoints/openapi/chat/completions",
                   json.dumps(dict(oa, stream=True, stream_options={"include_usage": True})).encode(), gh())
    lines = [l for l in b.decode().split("\n") if l.startswith("data: ")]
    try:
        chunks = [json.loads(l[6:]) for l in lines[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        ok = (s == 200 and h.get("Content-Type") == "text/event-stream" and lines[-1] == "data: [DONE]" and
              text == "Hello from Gemini on Vertex" and chunks[-1]["usage"]["completion_tokens"] == 4)
        check("vertex openapi SSE stream with usage + [DONE]", ok, (s, text, lines[-2:]))
    except Exception as e:
        check("vertex openapi SSE stream with usage + [DONE]", False, repr(e))
    st = jget(http("GET", base + "/_mock/stats")[2])
    check("stats last_vertex_body recorded", st["last_vertex_body"]["model"] == oa["model"], st.get("last_vertex_body"))

    ant = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
    amodel = vbase + "/publishers/anthropic/models/claude-3-5-sonnet-v2@20241022"
    s, h, b = http("POST", amodel + ":rawPredict", json.dumps(ant).encode(), gh())
    j = jget(b)
    check("vertex anthropic rawPredict", s == 200 and j["content"][0]["text"] == "Hello from Claude on Vertex" and
          j["usage"] == {"input_tokens": 10, "output_tokens": 5}, (s, b[:200]))
    s, h, b = http("POST", amodel + ":rawPredict", json.dumps(dict(ant, model="claude")).encode(), gh())
    check("vertex anthropic rawPredict with model -> 400", s == 400, (s, b[:200]))
    s, h, b = http("POST", amodel + ":rawPredict",
                   json.dumps(dict(ant, anthropic_version="bedrock-2023-05-31")).encode(), gh())
    check("vertex anthropic wrong anthropic_version -> 400", s == 400, (s, b[:200]))
    s, h, b = http("POST", amodel + ":streamRawPredict", json.dumps(dict(ant, stream=True)).encode(), gh())
    evnames = [l[7:] for l in b.decode().split("\n") if l.startswith("event: ")]
    datas = [json.loads(l[6:]) for l in b.decode().split("\n") if l.startswith("data: ")]
    text = "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta")
    check("vertex anthropic streamRawPredict SSE", s == 200 and evnames[0] == "message_start" and
          evnames[-1] == "message_stop" and text == "Hello from Claude on Vertex", (s, evnames, text))
    s, h, b = http("GET", vbase + "/publishers/google/models", headers=gh())
    check("vertex list publisher models", s == 200 and jget(b)["publisherModels"][0]["name"] ==
          "publishers/google/models/gemini-2.0-flash-001", (s, b[:200]))
    s, h, b = http("POST", vbase + "/endpoints/openapi/chat/completions", json.dumps(oa).encode(),
                   {"Content-Type": "application/json"})
    check("vertex without token -> 401 UNAUTHENTICATED", s == 401 and jget(b)["error"]["status"] == "UNAUTHENTICATED",
          (s, b[:200]))
    s, h, b = http("POST", vbase + "/endpoints/openapi/chat/completions", json.dumps(oa).encode(),
                   {"Authorization": "Bearer ya29.forged", "Content-Type": "application/json"})
    check("vertex with forged token -> 401", s == 401, (s, b[:200]))

    # ---- Entra + Azure ----
    def entra(tenant=TENANT, cid=CID, csec=CSEC, scope=ENTRA_SCOPE):
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": cid,
                                       "client_secret": csec, "scope": scope}).encode()
        return http("POST", base + "/%s/oauth2/v2.0/token" % tenant, form,
                    {"Content-Type": "application/x-www-form-urlencoded"})

    s, h, b = entra()
    j = jget(b)
    etok = j.get("access_token", "") if j else ""
    check("entra client_credentials token", s == 200 and etok.startswith("eyJ0eXAi.") and j["token_type"] == "Bearer"
          and j["expires_in"] == 3600, (s, b[:200]))
    s, h, b = entra(csec="wrong")
    check("entra wrong secret -> 401 invalid_client AADSTS7000215",
          s == 401 and jget(b)["error"] == "invalid_client" and "AADSTS7000215" in jget(b)["error_description"], (s, b[:200]))
    s, h, b = entra(tenant="no-such-tenant")
    check("entra unknown tenant -> 400 AADSTS90002", s == 400 and "AADSTS90002" in jget(b)["error_description"], (s, b[:200]))
    s, h, b = entra(scope="https://graph.microsoft.com/.default")
    check("entra wrong scope -> 400 invalid_scope", s == 400 and jget(b)["error"] == "invalid_scope", (s, b[:200]))

    ah = {"Authorization": "Bearer " + etok, "Content-Type": "application/json"}
    az = base + "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    ab = {"messages": [{"role": "user", "content": "Hi"}]}
    s, h, b = http("POST", az, json.dumps(ab).encode(), ah)
    j = jget(b)
    check("azure chat completions with Entra token", s == 200 and
          j["choices"][0]["message"]["content"] == "Hello from Azure with Entra ID", (s, b[:200]))
    s, h, b = http("POST", az, json.dumps(dict(ab, stream=True, stream_options={"include_usage": True})).encode(), ah)
    lines = [l for l in b.decode().split("\n") if l.startswith("data: ")]
    chunks = [json.loads(l[6:]) for l in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    check("azure SSE stream", s == 200 and lines[-1] == "data: [DONE]" and text == "Hello from Azure with Entra ID"
          and "usage" in chunks[-1], (s, text))
    s, h, b = http("GET", base + "/openai/models?api-version=2024-10-21", headers=ah)
    check("azure list models", s == 200 and jget(b)["data"][0]["id"] == "gpt-4o", (s, b[:200]))
    s, h, b = http("POST", az, json.dumps(ab).encode(), {"api-key": "k", "Content-Type": "application/json"})
    check("azure api-key header refused -> 401", s == 401 and jget(b)["error"]["code"] == "401", (s, b[:200]))
    s, h, b = http("POST", az, json.dumps(ab).encode(),
                   {"Authorization": "Bearer " + gcreds.token, "Content-Type": "application/json"})
    check("azure with a Google token -> 401", s == 401, (s, b[:200]))

    # ---- expiry / refresh ----
    s, h, b = http("POST", base + "/_mock/expire-tokens", b"")
    check("expire-tokens", s == 200, (s, b))
    s, h, b = http("POST", az, json.dumps(ab).encode(), ah)
    check("azure with expired token -> 401", s == 401, (s, b[:200]))
    s, h, b = http("GET", vbase + "/publishers/google/models", headers=gh())
    check("vertex with expired token -> 401", s == 401, (s, b[:200]))
    old = gcreds.token
    gcreds.refresh(greq)
    s, h, b = http("GET", vbase + "/publishers/google/models", headers=gh())
    check("vertex after google-auth refresh -> 200", s == 200 and gcreds.token != old, (s, b[:200]))
    st = jget(http("GET", base + "/_mock/stats")[2])
    check("stats counters", st["google_token_requests"] == 9 and st["entra_token_requests"] == 4 and
          st["azure_requests"] >= 6 and st["vertex_requests"] >= 10, st)
    try:
        with open(os.path.join(state_dir, "stats.json")) as f:
            check("stats.json persisted in state dir", json.load(f)["entra_token_requests"] == 4)
    except Exception as e:
        check("stats.json persisted in state dir", False, repr(e))

    srv.shutdown()
    srv.server_close()

    # ---- CLI: start as a subprocess, read LISTENING line ----
    import subprocess
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--port", "0", "--state-dir", state_dir,
                                 "--aws-access-key-id", AK, "--aws-secret-access-key", SK],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        m = re.match(r"^LISTENING (\d+)\n$", line)
        ok = bool(m)
        if ok:
            base = "http://127.0.0.1:%s" % m.group(1)
            s, h, b = aws_call("GET", "/foundation-models", token=None)
            ok = s == 200
        check("CLI prints 'LISTENING <port>' and serves", ok, repr(line))
    finally:
        if proc:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            check("CLI logs contain no secrets", SK not in (err or "") and AK not in (err or ""), err)

    n_ok = sum(results)
    print("SELF-TEST %s: %d/%d checks passed" % ("OK" if n_ok == len(results) else "FAILED", n_ok, len(results)))
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
