"""The SIP grammar nfsip parses, as regular expressions next to the RFC rules they implement.

RFC 3261 §25.1 gives the ABNF; the names below follow it. Text is handled as latin-1 (one character per
byte, so string offsets are byte offsets into the message); :func:`user_text` turns a piece of it into the
string handed out (UTF-8, RFC 3261 §7.3.1 "TEXT-UTF8").

Deliberate tolerances (a NAT helper that refuses a message does not make the sender fix it, it only
forwards private addresses unrewritten) are noted where a pattern is wider than the ABNF.
"""

from __future__ import annotations

import re
from typing import Final

# --------------------------------------------------------------------------- resource limits
#
# Parsing is linear, but a 64 KB datagram made of ";;;;" or thousands of Contact values would cost tens of ms
# of Python per packet (a cheap CPU DoS on a router). Real messages stay far below these (RFC 4475 longreq,
# the torture test for long messages, has 34 Via values).
MAX_PARAMS: Final = 64  # ';' separators per URI / header value (empty parameters included)
MAX_VALUES: Final = 128  # Via values, Contact values in one message
# ';' per Via/Contact/From/To header field, counted before any regular expression runs on the value: the
# regex engine spends time on every repetition of a parameter.
MAX_SEPARATORS: Final = 512

# --------------------------------------------------------------------------- basic rules (§25.1)

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# LWS = [*WSP CRLF] 1*WSP; SWS = [LWS]. Written loosely (any run of SP, HT, CR, LF): the header value
# parsers only ever see one header field, whose folding is already known to be well formed.
LWS = r"[ \t\r\n]*"
LWS_CHARS: Final = " \t\r\n"
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE (unrolled: no per-character alternation)
QUOTED_STRING = r'"[^"\\]*(?:\\[\s\S][^"\\]*)*"'

LWS_RUN = re.compile(LWS)
LWS_OR_COMMAS = re.compile(r"[ \t\r\n,]*")
# What may follow the last value of a list: empty elements (";;,;,,", RFC 4475 §3.1.2.1 badinv01), skipped.
EMPTY_LIST_TAIL = re.compile(r"[ \t\r\n;,]*\Z")
QUOTED = re.compile(QUOTED_STRING)
QUOTED_PAIR = re.compile(r"\\([\s\S])")  # quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
# Line folding (§7.3.1): a line break followed by whitespace is replaced by one SP in a value's text.
FOLD = re.compile(r"[ \t]*\r?\n[ \t]*")

# --------------------------------------------------------------------------- start-line (§7.1, §7.2)

# Request-Line = Method SP Request-URI SP SIP-Version CRLF; exactly one SP between the elements (RFC 4475
# §3.1.2.7-3.1.2.10 reject <uri>, LWS in the URI, several SP, trailing SP).
REQUEST_LINE = re.compile(r"(" + TOKEN + r") (\S+) ([Ss][Ii][Pp]/\d+\.\d+)\r?\Z", re.ASCII)
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF (SIP-Version compared case-insensitively).
STATUS_LINE = re.compile(r"[Ss][Ii][Pp]/(\d+\.\d+) (\d{3})(?: ([^\r\n]*?))?\r?\Z", re.ASCII)
# A line ending in a SIP-Version that REQUEST_LINE refused: a malformed request line, not "no SIP at all".
ENDS_WITH_SIP_VERSION = re.compile(r".* [Ss][Ii][Pp]/\d+\.\d+\s*\Z", re.ASCII | re.DOTALL)
# Every prefix of a start-line (no LF yet): such bytes are an incomplete message, anything else is not SIP.
START_LINE_PREFIX = re.compile(
    r"(?:"
    + TOKEN
    + r"(?: [^ \s]*(?: (?:[Ss](?:[Ii](?:[Pp](?:/[\d.]*)?)?)?)?)?)?"
    + r"|[Ss](?:[Ii](?:[Pp](?:/(?:\d+(?:\.(?:\d+(?: \d{0,3}(?: .*)?)?)?)?)?)?)?)?)\r?\Z",
    re.ASCII | re.DOTALL,
)

# --------------------------------------------------------------------------- header fields (§7.3)

# message-header = field-name HCOLON field-value CRLF, continued by folded lines (§7.3.1). One logical line:
# (name, "WSP:WSP", value up to its last LF, continuation lines included). LF alone ends a line too: the RFC
# 5118 archive files use LF (RFC 3261 §7.5 says CRLF).
HEADER_LINE = re.compile(r"(" + TOKEN + r")([ \t]*:[ \t]*)([^\n]*(?:\n[ \t][^\n]*)*)\n", re.ASCII)

# Compact header forms: RFC 3261 §7.3.3 (i c e f k l m s t v), RFC 3265 (o u), RFC 3515 (r), RFC 4028 (x),
# RFC 4474 (y), RFC 3892 (b), RFC 3841 (a j d).
COMPACT_FORMS: Final[dict[str, str]] = {
    "i": "call-id",
    "c": "content-type",
    "e": "content-encoding",
    "f": "from",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "s": "subject",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "b": "referred-by",
    "j": "reject-contact",
    "d": "request-disposition",
    "a": "accept-contact",
}

# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method (§20.16)
CSEQ = re.compile(r"(\d+)[ \t\r\n]+(" + TOKEN + r")\Z", re.ASCII)

# --------------------------------------------------------------------------- URIs (§19.1, §25.1)

SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):", re.ASCII)
# host = hostname / IPv4address / IPv6reference. IPv6 references are only checked for their character set,
# so the RFC 3261 ABNF bug form [2001:db8:::192.0.2.1] passes (RFC 5118 §4.10: tolerate).
HOST = r"(\[[0-9A-Fa-f:.]+\]|[^:;?\s\[\]<>@\",/]+)"
# SIP-URI = "sip:" [userinfo] hostport uri-parameters [headers] (SIPS-URI likewise). userinfo runs to the
# *last* '@': '@' may not appear unescaped in parameters or headers, but RFC 4475 intmeth shows that almost
# anything else, '?' and ';' included, is legal in the user part. Groups: scheme, userinfo, host, port,
# uri-parameters, headers.
SIP_URI = re.compile(
    r"([Ss][Ii][Pp][Ss]?):(?:(.*)@)?" + HOST + r"(?::(\d{1,5}))?((?:;[^;?]*)*)(?:\?(.*))?\Z", re.ASCII | re.DOTALL
)
# uri-parameter = ";" pname ["=" pvalue] (no LWS inside a URI)
URI_PARAM = re.compile(r";([^;?=]*)(=?)([^;?]*)")
# The end of an addr-spec written without <...>: its header parameters, the next value, or LWS.
ADDR_SPEC_END = re.compile(r"[;,\s]", re.ASCII)

# --------------------------------------------------------------------------- header parameters (§25.1)

# *(SEMI generic-param), generic-param = token [EQUAL gen-value], gen-value = token / host / quoted-string.
# The name is optional so that stray separators (";;", RFC 4475 badinv01) are skipped rather than refused.
_PARAM = LWS + r";" + LWS + r"(?:" + TOKEN + r"(?:" + LWS + r"=" + LWS + r"(?:" + QUOTED_STRING + r'|[^\s;,"]+))?)?'
PARAMS = re.compile(r"(?:" + _PARAM + r")*", re.ASCII)
# One parameter of a PARAMS match: (SEMI with its LWS, name, EQUAL with its LWS, value).
PARAM_PARTS = re.compile(
    r"(" + LWS + r";" + LWS + r")(" + TOKEN + r")?(?:(" + LWS + r"=" + LWS + r")(" + QUOTED_STRING + r'|[^\s;,"]+))?',
    re.ASCII,
)

# --------------------------------------------------------------------------- Via (§20.42)

# via-parm = sent-protocol LWS sent-by *(SEMI via-params); sent-protocol = protocol-name SLASH
# protocol-version SLASH transport; sent-by = host [COLON port]. Groups: protocol-name, protocol-version,
# transport, host, port, parameters.
VIA_PARM = re.compile(
    r"(" + TOKEN + r")" + LWS + r"/" + LWS + r"(" + TOKEN + r")" + LWS + r"/" + LWS + r"(" + TOKEN + r")[ \t\r\n]+"
    r"(\[[0-9A-Fa-f:.]+\]|[^\s;:,\[\]\"<>/]+)"
    r"(?:" + LWS + r":" + LWS + r"(\d{1,5}))?"
    r"((?:" + _PARAM + r")*)" + LWS,
    re.ASCII,
)

# --------------------------------------------------------------------------- message bodies

# multipart boundary parameter of Content-Type (RFC 2046 §5.1.1)
BOUNDARY = re.compile(r';[ \t\r\n]*boundary[ \t\r\n]*=[ \t\r\n]*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


def user_text(latin1: str) -> str:
    """A piece of the latin-1 message text as handed out: UTF-8, undecodable bytes as surrogate escapes."""
    if latin1.isascii():
        return latin1
    return latin1.encode("latin-1").decode("utf-8", "surrogateescape")


def canonical_header_name(name: str) -> str:
    """Lower-case long form of a header name (``"V"`` -> ``"via"``)."""
    low = name.strip().lower()
    return COMPACT_FORMS.get(low, low)
