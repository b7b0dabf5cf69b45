"""The Twilio SMS channel: send through the real twilio client, map outcomes, reconcile unknown ones."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from sqlalchemy import select, union
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProxyError, SSLError

from bot.channels.base import MAX_MEDIA_BYTES, Delivery, Media, MediaError, OutgoingText, SendResult
from bot.channels.models import OutboxMessage, OutboxPart
from bot.channels.sms_text import gsm7_normalise, split_text
from bot.config import Settings
from bot.db import session_scope, utcnow

log = logging.getLogger(__name__)
# twilio's HTTP client logs every request's query at INFO, and a reconcile's query holds the phone number.
_http_log = logging.getLogger(f"{__name__}.http")
_http_log.setLevel(logging.WARNING)

INBOUND_PATH = "/webhooks/twilio/sms"
STATUS_CALLBACK_PATH = "/webhooks/twilio/status"
DEFAULT_API_BASE_URL = "https://api.twilio.com"

# Twilio error codes that say something permanent about the recipient.
OPTED_OUT_CODES = frozenset({21610})
INVALID_NUMBER_CODES = frozenset({21211, 21614})


def recipient_state(error_code: str | None) -> str | None:
    """Return what a Twilio error code says of the recipient for good: "opted_out", "invalid_number" or None.

    Read alike from an API error at send time and from a status callback's ErrorCode.
    """
    code = int(error_code) if error_code and error_code.isdecimal() else None
    if code in OPTED_OUT_CODES:
        return "opted_out"
    if code in INVALID_NUMBER_CODES:
        return "invalid_number"
    return None


# Clocks differ and Twilio stamps its own time: look a little before our first attempt.
RECONCILE_SKEW = timedelta(minutes=1)
# A reconcile reads at most this many recent texts to one number; the search is bounded.
RECONCILE_LIMIT = 200
# A provider asking for a longer pause than this is capped: the retry sweep would stall on it.
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
# Errors raised before a single byte of the request left this machine.
_NOT_SENT_REASONS = (NewConnectionError, ConnectTimeoutError, SSLError, ProxyError)


class _TwilioHttp(HttpClient):
    """twilio's HTTP client interface over urllib3, the connection pool requests itself sends with.

    twilio's own client goes through a requests Session, whose per-request machinery (merging session
    settings, cookies and hooks, re-reading the environment) cost more CPU than the connection pool
    under it. This one sends straight through urllib3 with the same timeouts, proxy and CA settings
    (read from the environment once per host, as requests would), no retries and no redirects, and
    raises requests' exception classes as requests' adapter would, so an unsent request, a timeout
    and a dropped answer stay told apart. It also keeps each thread's last response: twilio's
    exceptions drop the headers, and a 429 says when to retry.
    """

    def __init__(self, *, timeout: float, pool_size: int = 10) -> None:
        super().__init__(logger=_http_log, is_async=False, timeout=timeout)
        self._last = threading.local()
        self._pool_size = pool_size
        self._managers: dict[str, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def _manager(self, scheme: str, origin: str, url: str) -> urllib3.PoolManager:
        manager = self._managers.get(origin)
        if manager is not None:
            return manager
        with self._lock:
            manager = self._managers.get(origin)
            if manager is None:
                # What requests reads from the environment for each request, read here once a host:
                # HTTPS_PROXY and friends (NO_PROXY honoured), REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE.
                environment = requests.Session().merge_environment_settings(url, {}, None, None, None)
                proxies = environment["proxies"]
                proxy = proxies.get(scheme) or proxies.get("all")
                verify = environment["verify"]
                bundle = verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH
                tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
                tls["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
                options: dict[str, Any] = {"num_pools": 4, "maxsize": self._pool_size, "retries": False, **tls}
                manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                self._managers[origin] = manager
        return manager

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """Send a request and remember its response for this thread."""
        self._last.response = None
        method = method.upper()
        if params:
            url += ("&" if "?" in url else "?") + _form(params)
        headers = dict(headers or {})
        body: bytes | None = None
        if data:
            if headers.get("Content-Type") in {"application/json", "application/scim+json"}:
                body = json.dumps(data).encode()
            else:
                body = _form(data).encode()
                headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if auth is not None:
            headers.update(urllib3.make_headers(basic_auth=f"{auth[0]}:{auth[1]}"))
        parts = urlsplit(url)
        manager = self._manager(parts.scheme, f"{parts.scheme}://{parts.netloc}", url)
        seconds = timeout or self.timeout
        try:
            answer = manager.request(
                method, url, body=body, headers=headers, redirect=allow_redirects, retries=False,
                timeout=urllib3.Timeout(connect=seconds, read=seconds),
            )  # fmt: skip
        except urllib3.exceptions.HTTPError as error:
            raise _as_requests_error(error) from error
        response = Response(answer.status, answer.data.decode("utf-8", errors="replace"), answer.headers)
        self._last.response = response
        return response

    def last_headers(self) -> Mapping[str, str]:
        """Return the headers of this thread's last response (empty if there was none)."""
        response = getattr(self._last, "response", None)
        return (response.headers or {}) if response is not None else {}


def _form(fields: Mapping[str, object]) -> str:
    """Encode fields as requests does: a list is a repeated key, None is left out."""
    pairs = []
    for name, value in fields.items():
        for item in value if isinstance(value, list | tuple) else (value,):
            if item is not None:
                pairs.append((name, item))
    return urlencode(pairs)


def _as_requests_error(error: urllib3.exceptions.HTTPError) -> requests.RequestException:
    """Raise what requests' adapter raises for urllib3's error (the channel tells outcomes apart by it)."""
    if isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError):
        return requests.ConnectTimeout(error)
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        return requests.ReadTimeout(error)
    if isinstance(error, ProxyError):
        return requests.exceptions.ProxyError(error)
    if isinstance(error, SSLError):
        return requests.exceptions.SSLError(error)
    return requests.ConnectionError(error)


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Return the seconds a Retry-After header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _claimed_elsewhere(*, sids: list[str], outbox_id: int) -> set[str]:
    """Return which provider ids another outbox row already owns (an identical text sent earlier).

    A row owns its provider id and, for a text sent as several messages, every part's (outbox_part):
    a process started afresh knows the later parts of texts sent before it only from there.
    """
    if not sids:
        return set()
    owned = union(
        select(OutboxMessage.provider_message_id).where(
            OutboxMessage.provider_message_id.in_(sids), OutboxMessage.id != outbox_id
        ),
        select(OutboxPart.provider_message_id).where(
            OutboxPart.provider_message_id.in_(sids), OutboxPart.outbox_id != outbox_id
        ),
    )
    with session_scope() as session:
        return set(session.scalars(owned))


class _TakenSids:
    """The Twilio messages this process has sent or matched, each with its outbox row.

    The database knows a row's provider ids only once its wave is recorded; so of two identical texts
    reconciled in one wave, the second would otherwise settle on the message the first just matched,
    and one text would be lost. Each sender has its channel, and one process per deployment sends
    (its leadership): what it took and has not recorded yet is all in here, bounded by count.
    """

    MAX = 50_000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._owner: dict[str, int] = {}

    def others(self, sids: list[str], outbox_id: int) -> set[str]:
        """Return which of these ids belong to another outbox row; call with the lock held."""
        return {sid for sid in sids if self._owner.get(sid, outbox_id) != outbox_id}

    def remember(self, sids: list[str], outbox_id: int) -> None:
        """Record ids as one outbox row's; call with the lock held."""
        for sid in sids:
            self._owner.pop(sid, None)
            self._owner[sid] = outbox_id
        while len(self._owner) > self.MAX:
            del self._owner[next(iter(self._owner))]


class TwilioSmsChannel:
    """Deliver texts with Twilio's Programmable Messaging API."""

    name = "sms"
    # Carriers care about the rate per sending number, not per recipient.
    min_interval_per_address = 0.0
    # Texts to different numbers may be in flight at once (the sender keeps one number's texts in order).
    # Each wave shares one opt-out check and one recording transaction: 16 delivered 23-26% more texts a
    # second than 8 on both backends. Requests beyond an account's concurrency limit get Twilio's 429
    # (error 20429: never processed, safe to retry), which the sender retries after its Retry-After.
    parallel_sends = 16
    # Twilio calls STATUS_CALLBACK_PATH with each text's delivery status (bot.channels.outbox.record_status).
    status_callbacks = True

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str = "",
        messaging_service_sid: str = "",
        api_base_url: str = DEFAULT_API_BASE_URL,
        status_callback: str | None = None,
        timeout: float = 10.0,
        max_per_second: float | None = None,
        part_interval: float = 0.0,
    ) -> None:
        if not (from_number or messaging_service_sid):
            raise ValueError("Twilio needs TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback
        self.max_per_second = max_per_second
        self.part_interval = part_interval
        self.http = _TwilioHttp(timeout=timeout, pool_size=self.parallel_sends)
        # Attachments follow Twilio's redirect to its file store, which requests does without the credentials.
        self._media = requests.Session()
        self.client = Client(account_sid, auth_token, http_client=self.http)
        self._credentials = (account_sid, auth_token)
        self.timeout = timeout
        self._taken = _TakenSids()
        # Only the host changes (a fake or a regional proxy); the API paths stay Twilio's.
        self.client.api.base_url = api_base_url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioSmsChannel:
        """Build the channel from the process settings."""
        rate = settings.sms_rate_per_second
        return cls(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            api_base_url=settings.twilio_api_base_url,
            status_callback=settings.public_url.rstrip("/") + STATUS_CALLBACK_PATH,
            timeout=settings.outbox_send_timeout,
            max_per_second=rate,
            part_interval=1.0 / rate if settings.outbox_pacing else 0.0,
        )

    def fetch_media(self, reference: str) -> Media:
        """Fetch a file a patient attached to an MMS (its MediaUrl), for staff; raise MediaError naming the problem.

        Only links on this account's API host are fetched, with the account's credentials (accounts that
        protect their media need them). Twilio answers with a redirect to its file store; requests drops
        the credentials when the redirect leaves the API host.
        """
        base = self.client.api.base_url.rstrip("/")
        if not reference.startswith(base + "/"):
            raise MediaError("the attachment's link is not on the Twilio API host this clinic uses")
        try:
            with self._media.get(reference, auth=self._credentials, timeout=self.timeout, stream=True) as answer:
                if answer.status_code != 200:
                    raise MediaError(f"Twilio answered {answer.status_code} for the attachment")
                content = bytearray()
                for chunk in answer.iter_content(64 * 1024):
                    content += chunk
                    if len(content) > MAX_MEDIA_BYTES:
                        raise MediaError(f"the attachment is larger than {MAX_MEDIA_BYTES // (1024 * 1024)} MB")
                content_type = answer.headers.get("Content-Type", "application/octet-stream")
        except requests.RequestException as error:
            raise MediaError(f"Twilio could not be reached for the attachment ({type(error).__name__})") from None
        return Media(bytes(content), content_type)

    @staticmethod
    def parts(text: OutgoingText) -> list[str]:
        """Return the provider messages one outbox text becomes: GSM-7 where possible, at most 3 segments each."""
        return split_text(gsm7_normalise(text.text))

    # -- sending ---------------------------------------------------------------------------------

    def send(self, text: OutgoingText) -> SendResult:
        """Send a text (one or more Twilio messages, in order); never raise for provider errors."""
        parts = self.parts(text)
        return self._send_parts(text, list(enumerate(parts)), found={}, split=len(parts) > 1)

    def _send_parts(
        self, text: OutgoingText, parts: list[tuple[int, str]], *, found: dict[int, str], split: bool
    ) -> SendResult:
        """Send numbered parts of a text in order; `found` holds the parts Twilio already has, by number.

        A split text's result carries every part's id that Twilio has (`SendResult.part_ids`), whatever
        the outcome, for the sender to store with the row.
        """
        sids = dict(found)
        for count, (index, part) in enumerate(parts):
            if count and self.part_interval:
                time.sleep(self.part_interval)
            result = self._create(text, body=part)
            if result.outcome is not Delivery.SENT:
                if sids and result.outcome in (Delivery.RETRY, Delivery.UNKNOWN):
                    # Part of the text went out: sending it all again would repeat that part.
                    # Unknown makes the sender reconcile, which sends only what Twilio lacks.
                    result = SendResult(Delivery.UNKNOWN, error_code=result.error_code, retry_after=result.retry_after)
                return replace(result, part_ids=tuple(sorted(sids.items()))) if split else result
            if result.provider_message_id:
                with self._taken.lock:
                    self._taken.remember([result.provider_message_id], text.outbox_id)
                sids[index] = result.provider_message_id
        first_sid = sids[min(sids)] if sids else None
        return SendResult(
            Delivery.SENT, provider_message_id=first_sid, part_ids=tuple(sorted(sids.items())) if split else ()
        )

    def _create(self, text: OutgoingText, *, body: str) -> SendResult:
        params: dict[str, Any] = {"to": text.address, "body": body}
        if self.from_number:
            params["from_"] = self.from_number
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        if self.status_callback:
            params["status_callback"] = self.status_callback
        try:
            message = self.client.messages.create(**params)
        except (TwilioRestException, TwilioServiceException) as error:
            return self._provider_error(text, error)
        except requests.RequestException as error:
            return self._network_error(text, error)
        except TwilioException:
            # An answer we could not read: the request did arrive, so it may have been accepted.
            log.warning("outbox %s: unreadable answer from twilio", text.outbox_id)
            return SendResult(Delivery.UNKNOWN)
        log.debug("outbox %s accepted by twilio as %s", text.outbox_id, message.sid)  # "sent" is logged with the id
        return SendResult(Delivery.SENT, provider_message_id=message.sid)

    def _provider_error(self, text: OutgoingText, error: TwilioRestException | TwilioServiceException) -> SendResult:
        status, code = int(error.status), error.code
        error_code = str(code if code is not None else status)
        # The message text can quote the phone number: log the codes only.
        log.warning("outbox %s: twilio answered %s (code %s)", text.outbox_id, status, error_code)
        if status == 429 or status >= 500:
            # Too many requests, or Twilio in trouble: both may say when to come back.
            retry_after = parse_retry_after(self.http.last_headers().get("Retry-After"), now=utcnow())
            return SendResult(Delivery.RETRY, error_code=error_code, retry_after=retry_after)
        return SendResult(Delivery.FAILED, error_code=error_code, recipient_state=recipient_state(error_code))

    @staticmethod
    def _network_error(text: OutgoingText, error: requests.RequestException) -> SendResult:
        reason: object = error.args[0] if error.args else None  # urllib3's error (see _as_requests_error)
        never_left = isinstance(error, requests.ConnectTimeout) or (
            isinstance(error, requests.ConnectionError) and isinstance(reason, _NOT_SENT_REASONS)
        )
        kind = type(error).__name__
        if never_left:
            log.warning("outbox %s: twilio unreachable (%s); will retry", text.outbox_id, kind)
            return SendResult(Delivery.RETRY, error_code="unreachable")
        # A read timeout or a dropped connection after the request left: Twilio may have it.
        log.warning("outbox %s: no answer from twilio (%s); outcome unknown", text.outbox_id, kind)
        return SendResult(Delivery.UNKNOWN, error_code="timeout" if isinstance(error, requests.Timeout) else None)

    # -- reconciling -----------------------------------------------------------------------------

    def _look_up(self, text: OutgoingText) -> tuple[list[str], dict[int, str]] | None:
        """Return a text's parts and those Twilio has (part number -> message id); None when Twilio is unreachable."""
        parts = self.parts(text)
        since = (text.first_attempt_at or utcnow()) - RECONCILE_SKEW
        try:
            records = self.client.messages.list(
                to=text.address,
                from_=self.from_number or values.unset,
                date_sent_after=since,
                limit=RECONCILE_LIMIT,
            )
        except (TwilioException, requests.RequestException) as error:
            log.warning("outbox %s: cannot reconcile, twilio unreachable (%s)", text.outbox_id, type(error).__name__)
            return None
        wanted = set(parts)
        candidates = [
            r
            for r in records
            if r.body in wanted
            and r.sid
            and (r.direction or "outbound").startswith("outbound")
            and (self.from_number or r.messaging_service_sid == self.messaging_service_sid)
            and (r.date_created is None or r.date_created >= since)
        ]
        sids = [r.sid for r in candidates]
        # Another row's messages, stored (its first part's id, and every part's of a split text) ...
        taken = _claimed_elsewhere(sids=sids, outbox_id=text.outbox_id)
        # Oldest first, so two rows with identical bodies each settle on a different message.
        candidates.sort(key=lambda r: (r.date_created or since, r.sid))
        found: list[str | None] = []
        with self._taken.lock:
            # ... and what this process sent or matched for another row and has not recorded yet.
            taken |= self._taken.others(sids, text.outbox_id)
            for part in parts:
                match = next((r for r in candidates if r.body == part and r.sid not in taken), None)
                if match is not None:
                    taken.add(match.sid)
                found.append(match.sid if match is not None else None)
            self._taken.remember([sid for sid in found if sid], text.outbox_id)
        return parts, {index: sid for index, sid in enumerate(found) if sid}

    def reconcile(self, text: OutgoingText) -> SendResult | None:
        """Ask Twilio whether an attempt with an unknown outcome arrived; send only what it lacks."""
        looked = self._look_up(text)
        if looked is None:
            return None
        parts, have = looked
        if not have:
            log.info("outbox %s: twilio has no trace of it; sending again", text.outbox_id)
            return SendResult(Delivery.RETRY)
        missing = [(index, part) for index, part in enumerate(parts) if index not in have]
        log.info("outbox %s: twilio has %s of %s parts (%s)", text.outbox_id, len(have), len(parts), have[min(have)])
        return self._send_parts(text, missing, found=have, split=len(parts) > 1)

    def find(self, text: OutgoingText) -> SendResult | None:
        """Ask Twilio whether an attempt with an unknown outcome arrived, sending nothing (the patient opted out).

        SENT with what it has (a split text's parts too) when any of it arrived, RETRY when Twilio has no
        trace of it, None when Twilio cannot be asked.
        """
        looked = self._look_up(text)
        if looked is None:
            return None
        parts, have = looked
        if not have:
            return SendResult(Delivery.RETRY)
        split = len(parts) > 1
        return SendResult(Delivery.SENT, provider_message_id=have[min(have)],
                          part_ids=tuple(sorted(have.items())) if split else ())  # fmt: skip
