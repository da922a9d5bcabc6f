from .test_broken_plugins import *
def test_show(installed, tmp_path):
    print(invoke("list-plugins").stdout[-2500:])
    for loss in BROKEN:
        print(invoke("validate", str(recipe(tmp_path, loss))).stderr)
