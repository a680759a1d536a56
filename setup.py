from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dominoes._runtime._atomics",
            ["dominoes/_runtime/_atomics.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
        Extension(
            "dominoes.components.kv._scan",
            ["components/kv/_scan.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
    ]
)
