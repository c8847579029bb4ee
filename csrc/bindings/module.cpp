// The fusedrnn._core extension: configuration entry points, and the kernels: one layer of a
// recurrent cell (recurrent_cell.cpp), layer stacks (stack.cpp), the dense layer and the
// cross-entropy (training.cpp), attention (attention.cpp). The output memory pool:
// memory_pool.h.
#include <cstdint>

#include "bindings/checks.h"
#include "bindings/memory_pool.h"
#include "common/blas.h"
#include "common/isa_table.h"
#include "common/threading.h"

namespace fusedrnn {
void bind_recurrent_cell(py::module_& m);
void bind_stack(py::module_& m);
void bind_training(py::module_& m);
void bind_attention(py::module_& m);
void bind_layer_norm(py::module_& m);
}  // namespace fusedrnn

PYBIND11_MODULE(_core, m) {
  using namespace fusedrnn;
  using namespace pybind11::literals;
  m.doc() = "fusedrnn's compiled kernels; use the wrappers in fusedrnn.functional.";
  remember_main_thread();
  m.def(
      "set_blas",
      [](std::uintptr_t sgemm, std::uintptr_t dgemm, std::uintptr_t sgemv, std::uintptr_t dgemv) {
        set_blas_gemm(reinterpret_cast<sgemm_fn>(sgemm), reinterpret_cast<dgemm_fn>(dgemm),
                      reinterpret_cast<sgemv_fn>(sgemv), reinterpret_cast<dgemv_fn>(dgemv));
      },
      "sgemm"_a, "dgemm"_a, "sgemv"_a, "dgemv"_a,
      "Hand the kernels the addresses of SciPy's sgemm, dgemm, sgemv and dgemv.");
  m.def(
      "set_blas_threads_local",
      [](std::uintptr_t fn) {
        set_blas_threads_local(reinterpret_cast<blas_threads_local_fn>(fn));
      },
      "fn"_a, "Hand the kernels openblas_set_num_threads_local (0 = not available).");
  m.def("blas_threads_local_available", &blas_threads_local_available);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("n must be >= 1, got " + std::to_string(n));
    set_num_threads(n);
  });
  m.def("have_openmp", &have_openmp);
  m.def("set_openmp_teams", &set_openmp_teams, py::arg("on"),
        "Run the kernels' teams on OpenMP's threads (True: what a process with PyTorch wants) or "
        "on fusedrnn's own pool (False, the default).");
  m.def("openmp_teams", &openmp_teams,
        "Whether the teams run on OpenMP's threads now (never in a forked child).");
  m.def("worker_idle_microseconds", &worker_idle_microseconds,
        "How long an idle worker thread of the kernels keeps its core before it sleeps.");
  m.def(
      "team_stalls",
      [] {
        const TeamStalls s = team_stalls();
        py::dict d;
        d["windows_judged"] = s.windows_judged;
        d["teams_stalled"] = s.teams_stalled;
        d["calls_alone"] = s.calls_alone;
        d["pause_us"] = s.pause_us;
        d["paused"] = s.paused;
        return d;
      },
      "The calling thread's teams on a shared machine (csrc/common/threading.h, TeamStalls): how "
      "many windows of its teams were judged and how many of them were stalled by members without "
      "a core, how many teams ran on "
      "one thread during the pauses that followed, the current pause in microseconds, and "
      "whether one is on now.");
  m.def("cached_bytes", &cached_bytes,
        "Bytes of freed outputs and scratch kept for the next calls' buffers of the same sizes.");
  m.def("release_cached_memory", &release_cached_memory,
        "Give the memory of freed outputs and scratch kept for later calls back to the system.");
  m.def(
      "_set_team_thresholds",
      [](int64_t min_step_work, int64_t min_units_per_member, bool pause_stalled_teams) {
        if (min_step_work < 0 || min_units_per_member < 1)
          throw py::value_error("thresholds must be >= 0 and >= 1");
        team_thresholds() = {min_step_work, min_units_per_member, pause_stalled_teams};
      },
      "min_step_work"_a, "min_units_per_member"_a, "pause_stalled_teams"_a = true,
      "Testing knob: when the recurrent time loops split their hidden units across threads, and "
      "whether a thread whose team was stalled runs its next teams on one thread for a while "
      "(team_stalls).");
  m.def("_team_thresholds", [] {
    const TeamThresholds& t = team_thresholds();
    return py::make_tuple(t.min_step_work, t.min_units_per_member, t.pause_stalled_teams);
  });
  m.def("active_isa", [] { return std::string(active_isa().name); });
  m.def("isa_supported", [](const std::string& name) { return isa_supported(name.c_str()); });
  m.def("select_isa", [](const std::string& name) {
    if (!select_isa(name.c_str()))
      throw py::value_error(
          "isa must be one of 'baseline', 'avx2', 'avx512' and supported by "
          "this CPU, got '" +
          name + "'");
  });
  m.attr("compiler") = py::str(__VERSION__);
  bind_recurrent_cell(m);
  bind_stack(m);
  bind_training(m);
  bind_attention(m);
  bind_layer_norm(m);
}
