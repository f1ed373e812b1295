"""Train page: settings become a queued RunConfig; impossible settings are explained and never queued."""
from __future__ import annotations

from engine.runs import store

TRAIN = "pages/train.py"


def test_without_a_dataset_it_points_to_the_data_page(lb):
    at = lb.app(TRAIN)
    lb.no_exception(at)
    assert "There is no dataset yet" in lb.texts(at, "info")
    assert not at.button


def test_architecture_card_shows_note_parameters_and_minimum_size(lb, seg_dataset):
    at = lb.app(TRAIN)
    lb.no_exception(at)
    assert "segmentation" in lb.texts(at, "caption")
    at.selectbox(key="train_arch__segmentation").set_value("unet").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Smallest image"] == "32 px"
    assert metrics["Parameters"].endswith(" M") or metrics["Parameters"].replace(",", "").isdigit()
    assert "skip connections" in lb.texts(at, "info")
    before = metrics["Parameters"]
    at.number_input(key="train_model_options__unet_base").set_value(32).run()     # a wider U-Net has more weights
    assert {m.label: m.value for m in at.metric}["Parameters"] != before


def test_new_runs_start_from_a_strong_architecture_not_the_first_in_the_list(lb, seg_dataset, cls_dataset):
    at = lb.app(TRAIN)
    at.selectbox(key="train_dataset_id").set_value(seg_dataset).run()
    assert at.selectbox(key="train_arch__segmentation").value == "unet"
    assert at.selectbox(key="train_arch__segmentation").options[0].startswith("MLP")       # teaching order kept
    at.selectbox(key="train_dataset_id").set_value(cls_dataset).run()
    assert at.selectbox(key="train_arch__classification").value == "resnet18"


def test_start_training_queues_the_chosen_settings_and_opens_monitor(lb, seg_dataset):
    at = lb.app(TRAIN)
    at.selectbox(key="train_arch__segmentation").set_value("unet").run()
    at.multiselect(key="train_augment").set_value(["hflip", "rotate"]).run()
    at.slider(key="train_augment_params__aug_rotate_degrees").set_value(30.0)
    at.selectbox(key="train_loss__segmentation").set_value("dice")
    at.selectbox(key="train_optimizer").set_value("sgd").run()
    at.slider(key="train_momentum").set_value(0.8)
    at.select_slider(key="train_lr").set_value(3e-2)
    at.selectbox(key="train_schedule").set_value("exponential").run()
    at.slider(key="train_decay_rate").set_value(0.95)
    at.number_input(key="train_decay_steps").set_value(50)
    at.number_input(key="train_epochs").set_value(3)
    at.number_input(key="train_batch_size").set_value(4)
    at.number_input(key="train_image_size__unet").set_value(64)
    at.number_input(key="train_early_stopping").set_value(2)
    at.number_input(key="train_seed").set_value(7)
    at.selectbox(key="train_device").set_value("cpu")
    at.text_input(key="train_name").set_value("sgd baseline").run()
    lb.no_exception(at)
    assert not at.error
    at.button(key="train_start").click().run()
    lb.no_exception(at)
    assert at.title[0].value == "Monitor"
    (run,) = store.list_runs()
    config = run["config"]
    assert run["status"] == "queued" and run["name"] == "sgd baseline" and run["dataset_id"] == seg_dataset
    assert (config["arch"], config["task"]) == ("unet", "segmentation")
    assert (config["loss"], config["optimizer"]) == ("dice", "sgd")
    assert (config["lr"], config["momentum"], config["schedule"]) == (3e-2, 0.8, "exponential")
    assert (config["decay_rate"], config["decay_steps"]) == (0.95, 50)
    assert (config["epochs"], config["batch_size"], config["image_size"]) == (3, 4, 64)
    assert (config["early_stopping"], config["seed"], config["device"]) == (2, 7, "cpu")
    assert config["augment"] == ["hflip", "rotate"]
    assert config["augment_params"]["rotate"] == {"degrees": 30.0}
    assert config["model_options"]["base"] == 16
    assert at.session_state["run_id"] == run["id"]


def test_add_to_queue_stays_on_the_page(lb, cls_dataset):
    at = lb.app(TRAIN)
    at.selectbox(key="train_arch__classification").set_value("lenet5").run()
    at.selectbox(key="train_schedule").set_value("step").run()
    at.number_input(key="train_step_size").set_value(3)
    at.slider(key="train_gamma").set_value(0.5)
    at.button(key="train_queue").click().run()
    at.button(key="train_queue").click().run()
    lb.no_exception(at)
    assert at.title[0].value == "Train"
    assert "Queued run" in lb.texts(at, "success")
    runs = store.list_runs()
    assert [r["status"] for r in runs] == ["queued", "queued"]
    assert {(r["config"]["step_size"], r["config"]["gamma"], r["config"]["loss"]) for r in runs} == {(3, 0.5, "ce")}


def test_inception_at_64_px_is_explained_and_not_queued(lb, cls_dataset):
    at = lb.app(TRAIN)
    at.selectbox(key="train_arch__classification").set_value("inception_v3").run()
    at.number_input(key="train_image_size__inception_v3").set_value(64).run()
    lb.no_exception(at)
    assert "Inception-v3 needs images of at least 75 px" in lb.texts(at, "error")
    assert at.button(key="train_start").disabled and at.button(key="train_queue").disabled
    assert store.list_runs() == []
    at.number_input(key="train_image_size__inception_v3").set_value(80).run()
    assert not at.error and not at.button(key="train_start").disabled


def test_transfer_learning_choices(lb, cls_dataset, tmp_path, monkeypatch):
    """'Available' means the weight file is on this machine; otherwise the download message shows before launch."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = lb.app(TRAIN)
    at.selectbox(key="train_arch__classification").set_value("lenet5").run()
    assert at.radio(key="train_pretrained__lenet5").options == ["From scratch (random weights)",
                                                                "Upload a weights file"]
    at.selectbox(key="train_arch__classification").set_value("resnet18").run()
    assert [m.value for m in at.metric if m.label == "ImageNet weights here"] == ["missing"]
    at.radio(key="train_pretrained__resnet18").set_value("imagenet").run()
    assert "ImageNet weights for ResNet-18 are not on this machine" in lb.texts(at, "error")
    assert at.button(key="train_queue").disabled and store.list_runs() == []
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(b"present; its hash is checked when the run loads it")
    at.run()
    assert [m.value for m in at.metric if m.label == "ImageNet weights here"] == ["yes"]
    at.checkbox(key="train_freeze_backbone").check().run()
    assert not at.error
    at.button(key="train_queue").click().run()
    lb.no_exception(at)
    (run,) = store.list_runs()
    assert (run["config"]["pretrained"], run["config"]["freeze_backbone"]) == ("imagenet", True)


def test_uploaded_weights_are_saved_in_the_workspace(lb, cls_dataset):
    at = lb.app(TRAIN)
    at.selectbox(key="train_arch__classification").set_value("resnet18").run()
    at.radio(key="train_pretrained__resnet18").set_value("file").run()
    assert "Upload a weights file" in lb.texts(at, "error")
    assert at.button(key="train_queue").disabled
    upload = ("Patient Smith/weights.pt", b"not checked here", "application/octet-stream")
    at.file_uploader(key="train_weights").set_value(upload)
    at.run()
    at.button(key="train_queue").click().run()
    lb.no_exception(at)
    (run,) = store.list_runs()
    saved = run["config"]["pretrained"]
    assert saved.startswith(str(lb.home)) and saved.endswith(".pt")
    assert "Smith" not in saved
    assert open(saved, "rb").read() == b"not checked here"


def test_a_refusal_from_the_queue_is_shown_as_its_sentence(lb, cls_dataset, monkeypatch):
    from engine.errors import UserError
    from engine.runs import submit

    def refuse(config):
        raise UserError("The queue is closed for maintenance; try again in a minute.")
    monkeypatch.setattr(submit, "submit", refuse)
    at = lb.app(TRAIN)
    at.button(key="train_start").click().run()
    lb.no_exception(at)
    assert at.title[0].value == "Train"
    assert "The queue is closed for maintenance" in lb.texts(at, "error")


def test_page_on_its_own_still_queues_and_says_where_to_look(lb, seg_dataset):
    at = lb.page("train.py").run()
    at.button(key="train_start").click().run()
    lb.no_exception(at)
    (run,) = store.list_runs()
    assert f"Run {run['id']} is queued; open the Monitor page" in lb.texts(at, "success")


def _widget_keys(at) -> set[str]:
    kinds = ("selectbox", "number_input", "checkbox", "radio", "select_slider", "slider", "multiselect",
             "text_input", "toggle")
    return {w.key for kind in kinds for w in getattr(at, kind) if w.key}


def test_every_run_setting_has_a_widget_on_the_train_page(lb, seg_dataset):
    """Parity with engine.config.SETTINGS: each RunConfig field is shown (conditional ones once revealed)."""
    from engine.config import SETTINGS
    at = lb.app(TRAIN)
    seen = _widget_keys(at)
    at.selectbox(key="train_optimizer").set_value("sgd").run()
    at.multiselect(key="train_augment").set_value(["rotate"]).run()
    seen |= _widget_keys(at)
    for schedule in ("exponential", "step"):
        at.selectbox(key="train_schedule").set_value(schedule).run()
        seen |= _widget_keys(at)
    at.radio(key="train_pretrained__unet").set_value("file").run()
    seen |= _widget_keys(at)
    lb.no_exception(at)
    missing = [s.name for s in SETTINGS
               if not any(k == f"train_{s.name}" or k.startswith(f"train_{s.name}__") for k in seen)]
    assert missing == []


def test_a_model_option_out_of_range_is_explained_not_kept(lb, seg_dataset):
    at = lb.app(TRAIN)
    at.selectbox(key="train_arch__segmentation").set_value("unet").run()
    at.number_input(key="train_model_options__unet_depth").set_value(9).run()
    lb.no_exception(at)
    assert "'Depth (levels)' must be between 2 and 5, not 9" in lb.texts(at, "error")
    assert at.button(key="train_start").disabled and store.list_runs() == []


def test_a_batch_larger_than_the_training_split_is_mentioned(lb, seg_dataset):
    at = lb.app(TRAIN)
    at.number_input(key="train_batch_size").set_value(1000).run()
    lb.no_exception(at)
    assert "larger than the training split" in lb.texts(at, "warning")


def test_small_validation_and_test_splits_are_warned_before_launch(lb, cls_dataset):
    """The test datasets are tiny: their validation split has far fewer than 30 images."""
    from engine.data.manifest import load_manifest
    val = sum(1 for sample in load_manifest(cls_dataset)["samples"] if sample["split"] == "val")
    at = lb.app(TRAIN)
    lb.no_exception(at)
    warnings = lb.texts(at, "warning")
    assert f"The validation split holds {val} image" in warnings and "95 % intervals" in warnings


def test_cross_validation_queues_one_run_per_fold(lb, cls_dataset):
    at = lb.app(TRAIN)
    at.number_input(key="train_folds").set_value(3).run()
    assert "Queues 3 runs" in lb.texts(at, "caption")
    at.button(key="train_queue").click().run()
    lb.no_exception(at)
    runs = sorted(store.list_runs(), key=lambda r: r["trial"])
    assert [(r["config"]["folds"], r["config"]["fold"], r["trial"]) for r in runs] == [(3, 1, 1), (3, 2, 2), (3, 3, 3)]
    assert len({r["study"] for r in runs}) == 1 and runs[0]["study"].startswith("cv:")
    assert all(r["status"] == "queued" for r in runs)


def _auto_expected(dataset_id: str, budget: int, monkeypatch):
    """The preset the Auto button should apply, with the timing probe fixed so page and test agree."""
    from engine.data.manifest import load_manifest
    from engine.presets import auto
    monkeypatch.setattr(auto, "probe_step_seconds", lambda values, fp, **where: 0.05)
    return auto.auto_settings(load_manifest(dataset_id), device="auto", budget_minutes=budget)


def test_auto_fills_the_form_and_explains_every_choice(lb, seg_dataset, monkeypatch):
    expected = _auto_expected(seg_dataset, 5, monkeypatch)
    v = expected.values
    at = lb.app(TRAIN)
    assert at.text_input(key="train_preset").value == "none"
    at.radio(key="train_auto_budget").set_value(5).run()
    at.button(key="train_auto").click().run()
    lb.no_exception(at)
    assert at.selectbox(key="train_arch__segmentation").value == v["arch"] == "unet"
    assert at.number_input(key="train_model_options__unet_depth").value == v["model_options"]["depth"]
    assert at.number_input(key="train_image_size__unet").value == v["image_size"]
    assert (at.number_input(key="train_epochs").value, at.number_input(key="train_batch_size").value,
            at.number_input(key="train_early_stopping").value) == (v["epochs"], v["batch_size"], v["early_stopping"])
    assert (at.selectbox(key="train_schedule").value, at.select_slider(key="train_lr").value) == ("cosine", 1e-3)
    assert at.selectbox(key="train_loss__segmentation").value == v["loss"]
    assert at.multiselect(key="train_augment").value == v["augment"] == ["rotate", "zoom"]
    assert at.slider(key="train_augment_params__aug_rotate_degrees").value == 10.0
    assert at.text_input(key="train_preset").value == "Auto (about 5 minutes)"
    shown = lb.texts(at, "markdown")
    assert all(reason in shown for reason in expected.reasons.values())
    assert not at.error

    at.number_input(key="train_epochs").set_value(3).run()           # the user can still change anything
    lb.no_exception(at)
    assert at.number_input(key="train_epochs").value == 3
    assert at.text_input(key="train_preset").value == "Auto (about 5 minutes, 1 changed by you)"
    assert "changed by you since" in lb.texts(at, "markdown")
    at.button(key="train_queue").click().run()
    (run,) = store.list_runs()
    config = run["config"]
    assert (config["epochs"], config["schedule"], config["image_size"]) == (3, "cosine", v["image_size"])
    assert config["preset"]["overridden"] == ["epochs"] and config["preset"]["values"]["epochs"] == 3
    assert config["preset"]["reasons"] == expected.reasons


def test_an_auto_preset_belongs_to_the_dataset_it_was_chosen_for(lb, seg_dataset, cls_dataset,
                                                                   monkeypatch):
    """The preset belongs to the dataset it was chosen for: another dataset's runs are not labelled with it."""
    _auto_expected(cls_dataset, 15, monkeypatch)
    at = lb.app(TRAIN)
    at.selectbox(key="train_dataset_id").set_value(cls_dataset).run()
    at.button(key="train_auto").click().run()
    lb.no_exception(at)
    assert at.selectbox(key="train_schedule").value == "cosine"
    assert at.text_input(key="train_preset").value.startswith("Auto (about 15 minutes")
    at.selectbox(key="train_dataset_id").set_value(seg_dataset).run()
    lb.no_exception(at)
    assert at.text_input(key="train_preset").value == "none"


def test_start_from_offers_your_finished_runs_of_this_architecture(lb, seg_dataset):
    from engine.runs.paths import run_dir
    source = lb.fake_run(seg_dataset, "segmentation", arch="unet", name="lung", value=0.81)
    run_dir(source).mkdir(parents=True, exist_ok=True)
    (run_dir(source) / "best.pt").write_bytes(b"weights")       # the page only checks that it is there
    lb.fake_run(seg_dataset, "segmentation", arch="unet", status="failed")          # not finished: not offered
    at = lb.app(TRAIN)
    at.selectbox(key="train_arch__segmentation").set_value("unet").run()
    radio = at.radio(key="train_pretrained__unet")
    assert "One of your finished runs" in radio.options
    radio.set_value("run").run()
    lb.no_exception(at)
    pick = at.selectbox(key="train_start_run__unet")
    assert pick.options == [f"Run {source} · U-Net · Dice 0.81 · lung"] and not at.error
    at.number_input(key="train_image_size__unet").set_value(32)
    at.button(key="train_queue").click().run()
    lb.no_exception(at)
    queued = [r for r in store.list_runs() if r["status"] == "queued"]
    assert [r["config"]["pretrained"] for r in queued] == [f"run:{source}"]


def test_learning_curve_button_queues_four_runs_on_one_split(lb, seg_dataset):
    at = lb.app(TRAIN)
    at.number_input(key="train_image_size__unet").set_value(32)
    at.button(key="train_curve").click().run()
    lb.no_exception(at)
    runs = store.list_runs()
    assert len(runs) == 4 and len({r["study"] for r in runs}) == 1 and runs[0]["study"].startswith("lc:")
    assert sorted(r["config"]["train_fraction"] for r in runs) == [0.1, 0.25, 0.5, 1.0]
    assert "Queued 4 runs" in lb.texts(at, "success")
