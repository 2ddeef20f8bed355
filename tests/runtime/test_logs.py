"""runtime.logs: loaders print no third-party chatter unless verbose, and leave settings as they were."""

import transformers.utils.logging as tf_logging

from finetune_fixtures import make_bert
from mergekit_het.models.encoder import load_encoder
from mergekit_het.runtime.logs import quiet_third_party, set_verbose


def test_load_encoder_is_quiet_by_default_and_verbose_on_request(tmp_path, capfd):
    path = make_bert(tmp_path / "bert")
    capfd.readouterr()
    load_encoder(path)
    assert "Loading weights" not in capfd.readouterr().err
    set_verbose(True)
    try:
        load_encoder(path)
        assert "Loading weights" in capfd.readouterr().err
    finally:
        set_verbose(False)


def test_quiet_third_party_restores_the_libraries_settings():
    tf_logging.set_verbosity_info()
    tf_logging.enable_progress_bar()
    try:
        with quiet_third_party():
            assert tf_logging.get_verbosity() == tf_logging.ERROR and not tf_logging.is_progress_bar_enabled()
        assert tf_logging.get_verbosity() == tf_logging.INFO and tf_logging.is_progress_bar_enabled()
    finally:
        tf_logging.set_verbosity_warning()


def test_quiet_third_party_silences_huggingface_hub_warnings_and_restores_them(capfd):
    """huggingface_hub logs e.g. 'Retrying in 1s' while a Hub id is unreachable: not inside the block."""
    import logging

    from huggingface_hub.utils import logging as hub_logging

    log = hub_logging.get_logger("huggingface_hub.utils._http")
    before = hub_logging.get_verbosity()
    with quiet_third_party():
        log.warning("Retrying in 1s [Retry 1/5].")
        assert hub_logging.get_verbosity() == logging.ERROR
    assert "Retrying" not in capfd.readouterr().err
    assert hub_logging.get_verbosity() == before
