"""The kernel's per-queue counters as nfsip reads them (/proc/net/netfilter/nfnetlink_queue)."""

from __future__ import annotations

from pathlib import Path

from nfsip.kernel.queue import queue_stats

# The format of net/netfilter/nfnetlink_queue.c seq_show: queue_number peer_portid queue_total copy_mode
# copy_range queue_dropped user_dropped id_sequence 1
PROC = """\
 5060 3321740018     0 2 65535     0     0     8123  1
 5061 2839133000     3 2 65535     2     1      977  1
    7 1111111111     0 2  4016     0     0       42  1
"""


def test_counters_of_nfsips_queues_are_summed_and_others_ignored(tmp_path: Path):
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(PROC)
    assert queue_stats((5060,), str(proc)) == {"enqueued": 8123, "queue_dropped": 0, "user_dropped": 0}
    assert queue_stats((5060, 5061), str(proc)) == {"enqueued": 9100, "queue_dropped": 2, "user_dropped": 1}


def test_no_bound_queue_or_no_file_reads_as_none(tmp_path: Path):
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(PROC)
    assert queue_stats((5070,), str(proc)) is None
    assert queue_stats((5060,), str(tmp_path / "missing")) is None
