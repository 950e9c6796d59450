"""Demo: ``python -m nfsiplab [--nat nfsip|masquerade|alg|none] [--phones N]``.

Builds the lab, places one sipp call per phone (concurrently) to the server and prints how many
RTP packets each capture point saw. With ``--nat nfsip`` (the default) the router masquerades and
runs nfsip: media flows both ways and the pinholes are gone after the BYE (nfsiplab.demo). With
``--nat masquerade`` it shows the problem nfsip solves: phone→server media arrives, server→phone
media does not.
"""

from __future__ import annotations

import argparse
import sys

from nfsiplab import topology as T
from nfsiplab.capture import Capture, print_report, stop_all
from nfsiplab.lab import Lab, can_run, cleanup_stale
from nfsiplab.sipp import SippUac, SippUas, have_sipp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nfsiplab", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--nat",
        choices=["nfsip", "masquerade", "alg", "none"],
        default="nfsip",
        help="router setup: plain masquerade, masquerade + kernel SIP ALG, or none "
        "(none: nfsip is expected to be started by you in the router namespace)",
    )
    ap.add_argument("--phones", type=int, default=None, help="phones calling at once (default 2 with nfsip, else 1)")
    ap.add_argument(
        "--distinct-media-ports",
        action="store_true",
        help="phone N uses RTP port 6000 + 1000*(N-1) instead of 6000 for all",
    )
    args = ap.parse_args(argv)
    reason = can_run() or (None if have_sipp() else "sipp not installed")
    if reason:
        print(f"cannot run the lab: {reason}", file=sys.stderr)
        return 2
    cleanup_stale()
    if args.nat == "nfsip":
        from nfsiplab.demo import run_demo

        return run_demo(phones=args.phones or 2, distinct_media_ports=args.distinct_media_ports)
    with Lab(phones=args.phones or 1) as lab:
        if args.nat in ("masquerade", "alg"):
            lab.masquerade()
        if args.nat == "alg":
            lab.kernel_sip_alg()
        caps = {f"{n} eth0": Capture(lab, n, T.HOST_IF).start() for n in [*lab.phones, T.SERVER]}
        with SippUas(lab, calls=len(lab.phones)) as uas:
            uacs = [
                SippUac(lab, phone, media_port=T.MEDIA_PORT + (1000 * i if args.distinct_media_ports else 0)).start()
                for i, phone in enumerate(lab.phones)
            ]
            results = [u.wait(90) for u in uacs]
            uas_result = uas.wait(30)
        stop_all(caps.values())
        for phone, res in zip(lab.phones, results, strict=True):
            print(f"{phone}: call {'ok' if res.ok else 'FAILED'} in {res.duration_s:.1f}s")
        print(f"server: {uas_result.successful_calls} calls ok, {uas_result.failed_calls} failed")
        print_report({name: cap.packets() for name, cap in caps.items()})
        for item in [*caps.values(), uas, *uacs]:
            item.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
