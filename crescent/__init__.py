from crescent.utils.dist import register_resolvers as _register_resolvers

_register_resolvers()  # ${crescent.run_stamp:} in conf/hydra/default.yaml
