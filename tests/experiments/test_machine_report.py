"""The report names the machine every figure was measured on, and what auto settings chose there."""
from leantrain.experiments.machine_report import autotune_lines, machine_line


def test_machine_line_names_cpu_capability_flags_cores_and_peaks_per_dtype():
    env = {"cpu_model": "AMD EPYC 7B13", "cpu_capability": "AVX2", "cpu_flags": ["avx2"], "cpu_cores": 2,
           "peak_flops_by_dtype": {"fp32": 106e9, "bf16": 18e9, "fp16": 6e9}}
    line = machine_line(env)
    assert line.startswith("CPU: AMD EPYC 7B13; PyTorch CPU capability AVX2; flags avx2; 2 usable cores")
    assert "fp32 106, bf16 18, fp16 6" in line
    assert machine_line({"device": "cpu"}) == ""  # records written before these fields existed


def test_autotune_lines_say_what_each_recipe_resolved_to():
    def run(recipe, precision):
        return {"run": {"name": f"x-{recipe}", "recipe": recipe, "autotune": {"precision": {"choice": precision}}}}

    lines = autotune_lines([run("lean", "fp32"), run("lean", "fp32"), run("lean", "bf16"), {"run": {"name": "b"}}])
    assert lines == ["Recipe lean, measured on this machine: precision auto -> fp32 (2 runs), bf16 (1 run) "
                     "(per-run timings in each JSON's run.autotune)."]
