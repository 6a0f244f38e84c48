"""The AT channel's pure core (drivers.at.AtProtocol): lines, final result codes, URCs, garbage.

No port, no event loop: bytes go in with `feed`, and the test watches what
comes out through the callbacks. The byte-stream property tests here run
thousands of generated streams; tests/drivers/test_at_fuzz.py sends such
streams through a real pseudo-terminal.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.at import (
    CME_MEANINGS,
    DEFAULT_URC_RULES,
    AtExchange,
    AtProtocol,
    UrcRules,
    cme_meaning,
    redact,
    result_error,
)
from drivers.exc import AtResultError, CallResultError, CmeError, CmsError


class Core:
    """An AtProtocol with recording callbacks."""

    def __init__(self, max_line_bytes: int = 256, rules: UrcRules = DEFAULT_URC_RULES) -> None:
        self.urcs: list[str] = []
        self.done: list[AtExchange] = []
        self.prompts: list[AtExchange] = []
        self.p = AtProtocol(rules, max_line_bytes, on_urc=lambda u: self.urcs.append(u.line),
                            on_done=self.done.append, on_prompt=self.prompts.append)

    def start(self, command: str, expect: tuple[str, ...] = (), **kw: object) -> AtExchange:
        ex = AtExchange(command, expect, **kw)  # type: ignore[arg-type]
        self.p.start(ex)
        return ex


def test_response_lines_are_collected_and_the_echo_dropped():
    c = Core()
    ex = c.start("AT+CSQ", ("+CSQ:",))
    c.p.feed(b"AT+CSQ\r\r\n+CSQ: 24,99\r\n\r\nOK\r\n")
    assert c.done == [ex]
    rsp = ex.outcome()
    assert rsp.lines == ("+CSQ: 24,99",) and rsp.final == "OK"
    assert c.urcs == []


def test_response_without_echo_is_the_same():
    c = Core()
    ex = c.start("AT+CSQ", ("+CSQ:",))
    c.p.feed(b"\r\n+CSQ: 24,99\r\n\r\nOK\r\n")
    assert ex.outcome().lines == ("+CSQ: 24,99",)


def test_channel_survives_cereg_urc_inside_cereg_read_response():
    # The URC (<stat>,"<tac>",...) arrives between the read response (<n>,<stat>,...) and its OK.
    c = Core()
    ex = c.start("AT+CEREG?", ("+CEREG:",))
    c.p.feed(b'\r\n+CEREG: 2,1,"1A2B","01A2B3C4",7\r\n\r\n+CEREG: 1,"1A2C","01A2B3C5",7\r\n\r\nOK\r\n')
    assert ex.outcome().lines == ('+CEREG: 2,1,"1A2B","01A2B3C4",7',)
    assert c.urcs == ['+CEREG: 1,"1A2C","01A2B3C5",7']


@pytest.mark.parametrize("urc", ["+CEREG: 2", "+CEREG: 0", '+CEREG: 5,"FFFE","0FFFFFFF",7', '+CEREG: 1,,,'])
def test_every_cereg_urc_form_is_told_apart_from_the_read_response(urc):
    c = Core()
    ex = c.start("AT+CEREG?", ("+CEREG:",))
    c.p.feed(f"\r\n{urc}\r\n+CEREG: 0,1\r\nOK\r\n".encode())
    assert ex.outcome().lines == ("+CEREG: 0,1",)
    assert c.urcs == [urc]


def test_known_urc_inside_unrelated_response_goes_to_subscribers():
    c = Core()
    ex = c.start('AT+QENG="servingcell"', ("+QENG:",))
    c.p.feed(b'\r\n+QENG: "servingcell","NOCONN"\r\n+QIND: "csq",20,99\r\n+QENG: "LTE",1\r\nRDY\r\n\r\nOK\r\n')
    assert ex.outcome().lines == ('+QENG: "servingcell","NOCONN"', '+QENG: "LTE",1')
    assert c.urcs == ['+QIND: "csq",20,99', "RDY"]


def test_unknown_plus_line_is_a_urc_when_the_command_names_its_prefix():
    c = Core()
    ex = c.start("AT+CSQ", ("+CSQ:",))
    c.p.feed(b"\r\n+XYZNEW: 1\r\n+CSQ: 5,99\r\nOK\r\n")
    assert ex.outcome().lines == ("+CSQ: 5,99",)
    assert c.urcs == ["+XYZNEW: 1"]
    assert c.p.counters.unknown_urcs == 1


def test_command_without_expected_prefix_keeps_bare_and_unknown_lines():
    c = Core()
    ex = c.start("ATI")
    c.p.feed(b"\r\nManufacturer: SIMCOM INCORPORATED\r\nModel: X\r\n+GCAP: +CGSM\r\n+QIND: PB DONE\r\nOK\r\n")
    assert ex.outcome().lines == ("Manufacturer: SIMCOM INCORPORATED", "Model: X", "+GCAP: +CGSM")
    assert c.urcs == ["+QIND: PB DONE"]


def test_cfun_read_keeps_its_line_although_cfun_is_also_a_boot_urc():
    c = Core()
    ex = c.start("AT+CFUN?", ("+CFUN:",))
    c.p.feed(b"\r\n+CFUN: 1\r\n\r\nOK\r\n")
    assert ex.outcome().lines == ("+CFUN: 1",)
    c.p.feed(b"\r\n+CFUN: 1\r\n")  # nothing in flight: the boot URC
    assert c.urcs == ["+CFUN: 1"]


@pytest.mark.parametrize("final,cls,code,meaning", [
    ("ERROR", AtResultError, None, None),
    ("+CME ERROR: 10", CmeError, 10, "SIM not inserted"),
    ("+CME ERROR: 159", CmeError, 159, "uplink busy"),
    ("+CME ERROR: 30", CmeError, 30, "no network service"),
    ("+CME ERROR: SIM not inserted", CmeError, 10, "SIM not inserted"),
    ("+CME ERROR: 516", CmeError, 516, "vendor-specific error 516 (see the modem's AT manual)"),
    ("+CMS ERROR: 330", CmsError, 330, "SMSC address unknown"),
    ("+CMS ERROR: 42", CmsError, 42, "network cause 42 (TS 24.011 / TS 23.040)"),
    ("NO CARRIER", CallResultError, None, None),
    ("BUSY", CallResultError, None, None),
    ("NO ANSWER", CallResultError, None, None),
    ("NO DIALTONE", CallResultError, None, None),
])
def test_final_result_codes_become_typed_errors_with_their_3gpp_meaning(final, cls, code, meaning):
    c = Core()
    ex = c.start("AT+CIMI")
    c.p.feed(f"\r\nsome line\r\n{final}\r\n".encode())
    with pytest.raises(cls) as info:
        ex.outcome()
    err = info.value
    assert type(err) is cls
    assert err.command == "AT+CIMI" and err.result == final and err.lines == ("some line",)
    assert "AT+CIMI" in str(err)
    if code is not None or meaning is not None:
        assert err.code == code and err.meaning == meaning
        assert meaning in str(err)


def test_cme_table_covers_the_common_27007_codes():
    for code, text in {3: "operation not allowed", 4: "operation not supported", 11: "SIM PIN required",
                       13: "SIM failure", 14: "SIM busy", 31: "network timeout", 100: "unknown",
                       111: "PLMN not allowed", 127: "missing or unknown APN"}.items():
        assert CME_MEANINGS[code] == text
    assert "not in the TS 27.007" in cme_meaning(99)


def test_secrets_in_commands_are_redacted_from_errors():
    err = result_error('AT+CPIN="1234"', "+CME ERROR: 16")
    assert "1234" not in str(err) and "incorrect password" in str(err)
    assert redact('AT+QICSGP=1,1,"apn","user","secret"') == "AT+QICSGP=<redacted>"


def test_garbage_lines_are_dropped_and_counted_but_the_answer_survives():
    c = Core()
    ex = c.start("AT+CSQ", ("+CSQ:",))
    c.p.feed(b"\xff\xfe\x80garbage\r\n\x01\x02ctl\r\n+C\x00SQ: 24,99\r\n\x00\x00OK\r\n")
    assert ex.outcome().lines == ("+CSQ: 24,99",)  # NULs are removed, the line kept
    n = c.p.counters
    assert n.garbage_lines == 2 and n.nul_bytes == 3


def test_an_overlong_line_is_dropped_up_to_its_terminator():
    c = Core(max_line_bytes=64)
    ex = c.start("AT+CSQ", ("+CSQ:",))
    c.p.feed(b"\r\n" + b"A" * 100)
    c.p.feed(b"B" * 100 + b"\r\n+CSQ: 1,2\r\nOK\r\n")
    assert ex.outcome().lines == ("+CSQ: 1,2",)
    assert c.p.counters.oversize_lines == 1


def test_a_stray_ok_with_nothing_in_flight_is_counted_not_delivered():
    c = Core()
    c.p.feed(b"\r\nOK\r\n\r\nRING\r\n")
    assert c.urcs == ["RING"]
    assert c.p.counters.stray_lines == 1


def test_a_timed_out_commands_late_answer_is_absorbed_not_given_to_the_next():
    c = Core()
    first = c.start("AT+COPS?", ("+COPS:",))
    c.p.abandon()
    c.p.feed(b'\r\n+COPS: 0,0,"X",7\r\n\r\nOK\r\n')
    assert first.final == "OK" and c.p.orphan is None and c.p.counters.late_lines == 2
    second = c.start("AT+CSQ", ("+CSQ:",))
    c.p.feed(b"\r\n+CSQ: 3,99\r\nOK\r\n")
    assert second.outcome().lines == ("+CSQ: 3,99",)


def test_a_late_cereg_read_response_is_never_mistaken_for_a_urc():
    c = Core()
    c.start("AT+CEREG?", ("+CEREG:",))
    c.p.abandon()  # timed out
    c.p.feed(b'\r\n+CEREG: 2,1,"1A2B","01A2B3C4",7\r\n+CEREG: 2\r\n\r\nOK\r\n')
    assert c.urcs == ["+CEREG: 2"] and c.p.counters.late_lines == 2
    c.p.feed(b"\r\n+CEREG: 0,1\r\n")  # no command, no orphan: a stray, not a URC
    assert c.urcs == ["+CEREG: 2"] and c.p.counters.stray_lines == 1
    ex = c.start("AT+CSQ", ("+CSQ:",))
    c.p.feed(b"\r\n+CEREG: 0,1\r\n+CSQ: 1,99\r\nOK\r\n")
    assert ex.outcome().lines == ("+CSQ: 1,99",) and c.urcs == ["+CEREG: 2"]
    assert c.p.counters.stray_lines == 2


def test_the_data_prompt_is_recognised_without_a_line_end():
    c = Core()
    ex = c.start("AT+CMGS=20", wants_prompt=True)
    c.p.feed(b"AT+CMGS=20\r\r\n> ")
    assert c.prompts == [ex] and not c.done
    c.p.feed(b"\r\n+CMGS: 7\r\n\r\nOK\r\n")
    assert ex.outcome().lines == ("+CMGS: 7",)


def test_command_specific_finals_end_the_command():
    c = Core()
    ok = c.start("AT+QISEND=0,5", finals=frozenset({"SEND OK"}), fail_finals=frozenset({"SEND FAIL"}))
    c.p.feed(b"\r\nSEND OK\r\n")
    assert ok.outcome().final == "SEND OK"
    bad = c.start("AT+QISEND=0,5", finals=frozenset({"SEND OK"}), fail_finals=frozenset({"SEND FAIL"}))
    c.p.feed(b"\r\nSEND FAIL\r\n")
    with pytest.raises(AtResultError):
        bad.outcome()


def test_urc_rules_refuse_a_malformed_prefix():
    with pytest.raises(ValueError, match="URC prefix"):
        UrcRules(frozenset({"CEREG"}))


# --- properties over generated streams ---------------------------------------------------

_word = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.\"-_", min_size=1, max_size=30)
_response_line = st.one_of(
    _word.map(lambda w: "+CSQ: " + w),
    st.from_regex(r"[0-9A-Za-z][0-9A-Za-z ,.]{0,30}", fullmatch=True).filter(
        lambda s: s.strip() and s.strip() not in ("OK", "ERROR", "RING", "BUSY", "RDY", "START", "NO CARRIER",
                                                  "NO ANSWER", "NO DIALTONE", "SMS DONE", "PB DONE",
                                                  "POWERED DOWN", "SMS READY", "Call Ready")
        and s.strip().upper() != "AT+CSQ" and not s.strip().startswith(">")),
)
_urc = st.sampled_from(['+CEREG: 1,"1A2B","01A2B3C4",7', "+CEREG: 2", '+QIND: "csq",20,99', "RDY",
                        "+CPIN: READY", '+QIURC: "recv",0', "+CMTI: \"SM\",3", "PB DONE"])
_garbage = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")).filter(
    lambda b: bool(b) and (b"\x00" not in b) and _is_garbage(b))
_final = st.sampled_from(["OK", "ERROR", "+CME ERROR: 10", "+CMS ERROR: 500", "NO CARRIER", "BUSY"])


def _is_garbage(b: bytes) -> bool:
    try:
        text = b.decode()
    except UnicodeDecodeError:
        return True
    return any(ord(ch) < 32 and ch != "\t" or ord(ch) == 127 for ch in text)


@st.composite
def scripted_exchange(draw):
    """A response with URCs and garbage lines interleaved, cut into random chunks."""
    lines = draw(st.lists(_response_line, max_size=6))
    final = draw(_final)
    echo = draw(st.booleans())
    items: list[tuple[str, object]] = [("line", x.strip()) for x in lines]
    urcs: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        u = draw(_urc)
        items.insert(draw(st.integers(0, len(items))), ("urc", u))
    for _ in range(draw(st.integers(0, 3))):
        items.insert(draw(st.integers(0, len(items))), ("garbage", draw(_garbage)))
    stream = b"AT+CSQ\r" if echo else b""
    for kind, value in items:
        if kind == "garbage":
            stream += b"\r\n" + value + b"\r\n"  # type: ignore[operator]
        else:
            stream += b"\r\n" + str(value).encode() + b"\r\n"
            if kind == "urc":
                urcs.append(str(value))
    stream += b"\r\n" + final.encode() + b"\r\n"
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks, last = [], 0
    for cut in cuts + [len(stream)]:
        chunks.append(stream[last:cut])
        last = cut
    garbage = sum(1 for k, _ in items if k == "garbage")
    return [x.strip() for x in lines], final, urcs, garbage, chunks


@settings(max_examples=1500)
@given(scripted_exchange())
def test_response_and_urcs_come_out_exactly_whatever_the_interleaving(script):
    lines, final, urcs, garbage, chunks = script
    c = Core()
    ex = c.start("AT+CSQ")
    for chunk in chunks:
        c.p.feed(chunk)
    assert c.done == [ex]
    assert ex.final == final
    assert ex.lines == lines
    assert c.urcs == urcs
    assert c.p.counters.garbage_lines == garbage


@settings(max_examples=1000)
@given(st.lists(st.binary(max_size=64), max_size=12), st.booleans())
def test_arbitrary_bytes_never_break_the_core(chunks, in_flight):
    c = Core(max_line_bytes=64)
    ex = c.start("AT+CSQ", ("+CSQ:",), wants_prompt=True) if in_flight else None
    for chunk in chunks:
        c.p.feed(chunk)
    c.p.connection_lost()
    if ex is not None and ex.final is not None:
        try:
            ex.outcome()
        except AtResultError:
            pass
    n = c.p.counters
    assert n.bytes_in == sum(map(len, chunks))
