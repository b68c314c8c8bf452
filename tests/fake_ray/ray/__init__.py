"""A stand-in for `ray`, for tests only (tests/fake_ray on sys.path): what lm-eval's vllm model calls for
data_parallel_size > 1 -- `ray.remote(num_gpus=...)` on a function, `.remote(*args)`, `ray.get`, `ray.shutdown` --
run in this process, each call recorded in CALLS (num_gpus, the arguments, the result)."""
from __future__ import annotations

CALLS: list[dict] = []


def remote(*args, num_gpus=None, **options):
    def wrap(fn):
        return _Remote(fn, {"num_gpus": num_gpus, **options})

    return wrap(args[0]) if args and callable(args[0]) else wrap


class _Remote:
    def __init__(self, fn, options):
        self.fn, self.options = fn, options

    def remote(self, *args, **kwargs):
        result = self.fn(*args, **kwargs)
        CALLS.append({"method": "remote", "function": self.fn.__name__, **self.options, "args": args,
                      "result": result})
        return _Ref(result)


class _Ref:
    def __init__(self, value):
        self.value = value


def get(refs):
    return [r.value for r in refs] if isinstance(refs, list) else refs.value


def shutdown():
    CALLS.append({"method": "shutdown"})
