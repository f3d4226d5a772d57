# Prepended to every model.py apclip writes (scale/triton_repo.py model_source), right after its
# docstring: the Python backend stub's interpreter ignores PYTHONPATH and starts from its base prefix,
# so put the server environment's site-packages (numpy<2 above all) first, with their .pth files (an
# editable apclip install), before numpy is imported. Unset (NVIDIA's containers): nothing to do.
import os as _os
import site as _site
import sys as _sys

for _folder in reversed(list(filter(None, _os.environ.get("APCLIP_SITE_DIRS", "").split(_os.pathsep)))):
    _sys.path.insert(0, _folder)
    _site.addsitedir(_folder)
