import pytest

from trainer import contract
from trainer.checkpoint import layout
from trainer.storage import FileInfo


def manifest(step=40, files=None):
    return layout.Manifest(step=step, world_size=2, kind="replicated",
                           files=files or {"state.pt": FileInfo(10, "ab"), "rank-00000.pt": FileInfo(3, "cd")},
                           created=1.5)


def test_manifest_round_trips():
    m = manifest()
    assert layout.manifest_from_bytes(layout.manifest_to_bytes(m), expect_step=40) == m


@pytest.mark.parametrize("data,why", [
    (b"{", "Expecting"),
    (b'{"format": 99}', "unknown manifest format"),
    (b'{"format": 1, "step": 39, "files": {}}', "folder says 40"),
], ids=["truncated", "future-format", "wrong-step"])
def test_bad_manifests_are_rejected(data, why):
    with pytest.raises(ValueError, match=why):
        layout.manifest_from_bytes(data, expect_step=40)


def test_a_manifest_without_files_is_rejected():
    doc = layout.manifest_to_bytes(manifest()).replace(b'"state.pt"', b'"x"')
    assert layout.manifest_from_bytes(doc, expect_step=40).files.keys() == {"x", "rank-00000.pt"}
    with pytest.raises(ValueError, match="no files"):
        layout.manifest_from_bytes(b'{"format": 1, "step": 40, "world_size": 1, "kind": "r", "created": 0, "files": {}}',
                                   expect_step=40)


@pytest.mark.parametrize("data,step", [(b"1200\n", 1200), (b"", None), (None, None), (b"x", None), (b"-3", None)])
def test_parse_latest(data, step):
    assert layout.parse_latest(data) == step


@pytest.mark.parametrize("latest,listed,expected", [
    (None, [], []),
    (b"30\n", [10, 20, 30], [30, 20, 10]),
    (b"20\n", [10, 20, 30], [20, 10]),  # 30's commit was cut before `latest` moved: not committed
    (b"50\n", [10, 20], [50, 20, 10]),  # `latest` pointing at a vanished folder falls back
    (None, [20, 10], []),                # no `latest`: nothing was ever committed
    (b"junk", [20, 10], [20, 10]),       # a `latest` that names no step is corrupt: every step is a fallback
], ids=["empty", "normal", "newer-than-latest", "latest-missing", "no-latest", "latest-unreadable"])
def test_restore_candidates(latest, listed, expected):
    assert layout.restore_candidates(latest, listed) == expected


@pytest.mark.parametrize("committed,all_steps,newest,keep,expected", [
    ([10, 20, 30], [10, 20, 30], 30, 2, [10]),
    ([10, 30], [10, 20, 30], 30, 2, [20]),          # 20 never committed: a failed save's leftovers
    ([10, 20, 30], [10, 20, 30, 40], 30, 1, [10, 20]),  # 40 may be a save in flight: untouched
    ([30], [30], 30, 3, []),
])
def test_steps_to_prune(committed, all_steps, newest, keep, expected):
    assert layout.steps_to_prune(committed, all_steps, newest=newest, keep=keep) == expected


def test_steps_in_listing_ignores_other_names():
    assert layout.steps_in_listing([contract.LATEST_NAME, "step-000000020", "step-000000010", "junk"]) == [10, 20]


def test_a_folder_loses_only_the_temp_files_a_killed_write_left(tmp_path):
    from trainer.storage import open_storage

    run = tmp_path / "r"
    (run / "step-000000010").mkdir(parents=True)
    for name in ("latest", "latest.tmp-4242-0", "step-000000010/state.pt", "step-000000010/rank-00000.pt.tmp-7-3",
                 "step-000000010/notes.tmp-x"):
        (run / name).write_text("x")
    storage = open_storage(str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in storage.remove_leftover_temps(str(run))] == ["latest.tmp-4242-0"]
    assert (run / "step-000000010/rank-00000.pt.tmp-7-3").exists()  # not recursive: the step's own sweep
    storage.remove_leftover_temps(str(run), recursive=True)
    assert sorted(p.name for p in run.rglob("*") if p.is_file()) == ["latest", "notes.tmp-x", "state.pt"]


@pytest.mark.parametrize("latest,listed,expected", [
    (None, [], []),
    (b"30\n", [10, 20, 30], [30]),          # a clean restart: only the committed folder
    (b"20\n", [10, 20, 30, 40], [40, 30, 20]),  # 30 and 40: saves cut before `latest` moved
    (None, [20, 10], [20, 10]),             # nothing committed: any folder may be a cut save's
    (b"junk", [20, 10], [20, 10]),
], ids=["empty", "clean", "cut-saves", "no-latest", "latest-unreadable"])
def test_steps_a_cut_save_may_be_in(latest, listed, expected):
    assert layout.steps_a_cut_save_may_be_in(latest, listed) == expected


@pytest.mark.parametrize("world_size,listed,expected", [
    (1, [], ["state.pt", "dcp/__0_0.distcp", "dcp/.metadata", "rank-00000.pt"]),
    (1, ["rank-00000.pt"], ["state.pt", "dcp/__0_0.distcp", "dcp/.metadata"]),  # killed in state.pt's upload
    (2, ["rank-00000.pt", "rank-00001.pt", "state.pt"], ["dcp/__0_0.distcp", "dcp/__1_0.distcp", "dcp/.metadata"]),
    (2, ["rank-00000.pt", "rank-00001.pt", "state.pt", "manifest.json"], []),  # every file landed before it
    # an attempt with 3 ranks wrote it: its rank files say so, though this attempt has 1
    (1, ["rank-00000.pt", "rank-00002.pt", "dcp", "dcp/__0_0.distcp"],
     ["state.pt", "dcp/__1_0.distcp", "dcp/__2_0.distcp", "dcp/.metadata", "rank-00001.pt"]),
], ids=["empty-folder", "replicated-cut", "cut-before-manifest", "with-manifest", "larger-earlier-world"])
def test_files_a_save_may_not_have_finished(world_size, listed, expected):
    assert layout.files_a_save_may_not_have_finished(world_size, listed) == expected


@pytest.mark.parametrize("name,rank", [("rank-00003.pt", 3), ("rank-123456.pt", 123456), ("rank-3.pt", None),
                                       ("rank-00003.pt.tmp-1-2", None), ("state.pt", None)])
def test_parse_rank_file(name, rank):
    assert contract.parse_rank_file(name) == rank
    if rank is not None:
        assert contract.parse_rank_file(contract.rank_file(rank)) == rank


def test_the_files_asked_for_one_by_one_are_those_cut_saves_lack_and_at_most_the_cap(tmp_path):
    from trainer.checkpoint import sweep
    from trainer.storage import open_storage

    run = tmp_path / "r"
    for name in ("latest", "step-000000010/rank-00000.pt", "step-000000020/rank-00000.pt",
                 "step-000000020/rank-00001.pt", "step-000000020/state.pt", "step-000000020/manifest.json",
                 "step-000000030/rank-00001.pt", "step-000000030/dcp/__1_0.distcp"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("20\n" if name == "latest" else "x")
    storage = open_storage(str(tmp_path))
    paths = sweep.files_a_cut_save_may_have_open(storage, str(run), world_size=2)
    # 10 is older than `latest`: no save of a run resumed from 20 wrote it. 20 has its manifest; 30 was cut.
    assert [p[len(str(run)) + 1:] for p in paths] == [
        "step-000000030/state.pt", "step-000000030/dcp/__0_0.distcp", "step-000000030/dcp/.metadata",
        "step-000000030/rank-00000.pt"]
    # A 1024-rank save cut early: one request per missing file would be thousands. With the 2 reads before
    # them and 2 listings (30 and its dcp/; 20 is not even listed), the sweep stays at the cap.
    assert len(sweep.files_a_cut_save_may_have_open(storage, str(run), world_size=1024)) == \
        sweep.MAX_EXACT_SWEEP_REQUESTS - 4
