"""Signals held once a command has passed its point of no return."""

from __future__ import annotations

import os
import signal

import pytest

from anomaly_vae.interruptions import hold_interruptions, interruptions_held_to_the_end


def test_a_second_ctrl_c_while_held_stops_at_once() -> None:
    # For a tracking server that hangs while the command finishes: a user who presses Ctrl-C
    # again is not kept waiting for MLflow's minutes of retries.
    with pytest.raises(KeyboardInterrupt), interruptions_held_to_the_end() as held:
        hold_interruptions()
        os.kill(os.getpid(), signal.SIGINT)
        assert held.signum == signal.SIGINT  # held: the command goes on
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("the second Ctrl-C was held too")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_a_command_signals_act_as_ever() -> None:
    hold_interruptions()  # the library called from Python: nothing to finish for
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("Ctrl-C was held")


def test_an_ignored_signal_stays_ignored_once_held() -> None:
    # A command that a script starts in the background (`anomaly-vae train ... &`) has SIGINT
    # ignored: the Ctrl-C meant for the script stopped it with exit 130 if it came while a
    # version was being registered.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interruptions_held_to_the_end() as held:
            hold_interruptions()
            os.kill(os.getpid(), signal.SIGINT)
        assert held.signum is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
