"""minigpt.runlog: log.jsonl's records, the rule that an evaluation waits for its step's record, the timing fields."""

import json
import time

from minigpt.runlog import RunClock, RunLog


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_evaluation_joins_the_record_of_its_step(tmp_path):
    log = RunLog(tmp_path / "log.jsonl")
    log.open()
    assert log.due(0, log_interval=10) and not log.due(3, log_interval=10)
    log.evaluated(3, val_loss=2.5, train_loss_eval=2.25)
    assert log.due(3, log_interval=10)  # an evaluation waits: iteration 3 gets a record after all
    assert log.step({"iter": 3, "lr": 0.1, "train_loss": 2.0}, {"elapsed_s": 1.0}) is True
    assert log.pending is None and not log.due(4, log_interval=10)
    assert log.step({"iter": 4, "lr": 0.1, "train_loss": 1.5}, {"elapsed_s": 2.0}) is False
    records = read(tmp_path / "log.jsonl")
    assert records == [{"iter": 3, "lr": 0.1, "train_loss": 2.0, "val_loss": 2.5, "train_loss_eval": 2.25, "elapsed_s": 1.0},
                       {"iter": 4, "lr": 0.1, "train_loss": 1.5, "elapsed_s": 2.0}]
    assert list(records[0]) == ["iter", "lr", "train_loss", "val_loss", "train_loss_eval", "elapsed_s"]  # step, eval, timing


def test_a_resumed_log_keeps_the_earlier_records_and_the_saved_evaluation(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"iter": i, "train_loss": 1.0}) + "\n" for i in range(6)) + '{"iter": 6, "tr')
    log = RunLog(path)
    log.resume({"iter": 5, "val_loss": 3.0, "train_loss_eval": 3.5}, 4)  # saved at another iteration: not ours
    assert log.pending is None
    log.resume({"iter": 4, "val_loss": 3.0, "train_loss_eval": 3.5}, 4)
    log.open(keep_before=4)
    assert [r["iter"] for r in read(path)] == [0, 1, 2, 3]  # the records from 4 on are written again, the cut line dropped
    log.step({"iter": 4, "lr": 0.1, "train_loss": 1.0}, {})
    assert read(path)[-1] == {"iter": 4, "lr": 0.1, "train_loss": 1.0, "val_loss": 3.0, "train_loss_eval": 3.5}


def test_other_ranks_keep_their_records_in_memory(tmp_path):
    log = RunLog(None)
    log.open(keep_before=3)
    log.step({"iter": 0}, {})
    assert log.records == [{"iter": 0}] and list(tmp_path.iterdir()) == []


def test_paused_time_is_not_training_throughput():
    clock = RunClock(elapsed_before=100.0)
    with clock.paused():
        time.sleep(0.2)
    clock.count(1000)
    tokens_per_sec, elapsed = clock.throughput()
    assert tokens_per_sec > 1000 / 0.1  # the 0.2 s pause is left out
    assert elapsed >= 100.2  # but counts as wall time
    assert clock.window_tokens == 0
