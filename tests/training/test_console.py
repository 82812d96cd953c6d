"""The run's console line: loss, weighted z_loss, tokens/s, MFU; a bar on a terminal, plain lines in a log."""
import io

from research.training.metrics import ConsoleProgress, console_line, weighted_z_loss

METRICS = {"loss": 5.8382, "z_loss": 36.19, "learning_rate": 9.75e-4, "tokens_per_second": 12345.0,
           "mfu": 0.0312, "grad_norm": 1.3}


def test_console_line_shows_throughput_mfu_and_z_loss_as_weighted():
    line = console_line(40, 300, METRICS, z_loss_weight=1e-4)
    assert line == "step 40/300 | loss 5.8382 | z_loss 3.62e-03 | lr 9.75e-04 | 12.3k tok/s | MFU 3.1%"
    assert "eval_loss 6.0000" in console_line(40, 300, {**METRICS, "eval_loss": 6.0})
    assert "z_loss" not in console_line(40, 300, METRICS)  # no z_loss term: nothing to show


def test_final_metrics_show_z_loss_as_weighted_for_one_model_and_for_k():
    final = {"loss": 5.8, "z_loss": 36.0, "opt.learning_rate=0.01/z_loss": 30.0, "opt.learning_rate=0.01/loss": 5.0}
    assert weighted_z_loss(final, 1e-4) == {"loss": 5.8, "z_loss": 36.0 * 1e-4,
                                            "opt.learning_rate=0.01/z_loss": 30.0 * 1e-4,
                                            "opt.learning_rate=0.01/loss": 5.0}
    assert weighted_z_loss(final, 0.0)["z_loss"] == 0.0  # fine-tuning's default: no term at all


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_redirected_console_prints_plain_lines_without_carriage_returns():
    log = io.StringIO()
    with ConsoleProgress(300, 0, z_loss_weight=1e-4, stream=log) as progress:
        for step in range(1, 31):
            progress.update(1)
            if step % 10 == 0:
                progress.report(step, METRICS, keep=step == 30)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["step 10/300", "step 20/300", "step 30/300"]
    assert all("12.3k tok/s" in line and "MFU 3.1%" in line for line in lines)


def test_terminal_console_is_a_bar_with_the_line_as_postfix():
    terminal = _Terminal()
    with ConsoleProgress(300, 100, z_loss_weight=1e-4, stream=terminal) as progress:
        progress.update(10)
        progress.report(110, METRICS)
        progress.update(1)
        progress.report(111, {**METRICS, "eval_loss": 6.0}, keep=True)
    text = terminal.getvalue()
    assert "\r" in text and "111/300" in text  # tqdm redraws in place, resuming from the initial step
    assert "12.3k tok/s | MFU 3.1%" in text
    assert "step 111/300 | loss 5.8382" in text  # the eval step's line is kept above the bar


def test_disabled_console_writes_nothing():
    quiet = _Terminal()
    with ConsoleProgress(10, 0, enabled=False, stream=quiet) as progress:
        progress.update(1)
        progress.report(1, METRICS, keep=True)
    assert quiet.getvalue() == ""
