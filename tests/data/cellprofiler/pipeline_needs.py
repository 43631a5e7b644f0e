"""What pipelines need from their LoadData CSV, as CellProfiler 4.2.8 itself reads them.

Run with CellProfiler's interpreter: ``pipeline_needs.py PLUGINS_DIR PIPE.cppipe...``
prints one JSON object: pipeline path -> ``{"images": [...], "metadata": [...],
"load_errors": [...]}`` where ``images`` are the images enabled modules read that no
module makes (so LoadData must provide them), and ``metadata`` the tags LoadData groups
by plus every ``\\g<Tag>`` a setting uses (SaveImages file names), which LoadData must
provide as ``Metadata_<Tag>`` columns.
"""
# ruff: noqa: E402 - CellProfiler must be set headless before its modules are imported.

import json
import re
import sys

from cellprofiler_core.preferences import set_headless, set_plugin_directory

set_headless()
set_plugin_directory(sys.argv[1], globally=False)

import cellprofiler_core.utilities.core.modules as modules
from cellprofiler_core.pipeline import LoadException, Pipeline
from cellprofiler_core.setting.subscriber import ImageListSubscriber, ImageSubscriber
from cellprofiler_core.setting.text import ImageName

modules.fill_modules()
TAG = re.compile(r"\\g<(\w+)>")


def needs(path: str) -> dict:
    pipeline = Pipeline()
    errors: list[str] = []

    def listener(_pipeline, event):
        if isinstance(event, LoadException):
            errors.append(str(event.error))

    pipeline.add_listener(listener)
    pipeline.load(path)
    made: set[str] = set()
    images: list[str] = []
    tags: list[str] = []
    for module in pipeline.modules():
        if not module.enabled:
            continue
        if module.module_name == "LoadData" and module.wants_image_groupings.value:
            tags += [t.strip() for t in module.metadata_fields.value.split(",") if t.strip()]
        for setting in module.visible_settings():
            if isinstance(setting, ImageName):
                made.add(setting.value)
            elif isinstance(setting, (ImageSubscriber, ImageListSubscriber)):
                names = setting.value if isinstance(setting.value, list) else [setting.value]
                images += [n for n in names if n not in made and n not in images]
            tags += TAG.findall(str(setting.value))
    return {"images": images, "metadata": sorted(set(tags)), "load_errors": errors}


print(json.dumps({p: needs(p) for p in sys.argv[2:]}))
