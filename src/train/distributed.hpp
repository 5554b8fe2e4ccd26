// Data-parallel training over MPI (docs/distributed.md). Built with MPI when CMake finds it
// (INFINI_WITH_MPI); otherwise, and whenever the process was not started by mpirun, every
// call is a single-process no-op, so a plain `infini train` behaves the same in both builds.
//
// The contract with the trainer (train/trainer.hpp, seam 3): each rank computes the gradient
// of its rows of the global batch, already scaled by 1 / (predictions in the global batch),
// so summing over ranks gives the gradient of the global batch. allreduce_gradient() sums in
// buckets with a reduce-scatter followed by an all-gather: every element is reduced on
// exactly one rank and then copied, so all ranks hold bit-identical gradients and their
// weights never drift apart.
#pragma once
#include <cstdint>
#include <string>

#include "core/error.hpp"
#include "train/trainer.hpp"

namespace infini::train {

// An error every rank detects at the same point (a collective check failed): each rank
// throws it and exits normally, so no MPI_Abort is needed.
class CollectiveError : public Error {
 public:
  using Error::Error;
};

class Distributed {
 public:
  // Initialises MPI when launched by mpirun/mpiexec (their environment variables are set);
  // throws when launched with several processes by a build without MPI.
  Distributed();
  ~Distributed();  // MPI_Finalize
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }

  // Collective: throws CollectiveError on every rank when `hash` is not the same on all of
  // them. `what` names the thing compared ("the model config", "the training data ...").
  void check_same(uint64_t hash, const std::string& what);
  // Collective: true on every rank when `flag` is true on any rank.
  bool any(bool flag);
  // Collective: sums the step's gradient (bucketed, in place) and its loss sum and count.
  void allreduce_gradient(StepGradient& sg);
  // For an error seen by this rank only: prints it and aborts every rank (mpirun exits
  // non-zero) instead of leaving the others waiting in a collective. No-op with world 1.
  void abort_on_error(const std::string& message);

  double comm_seconds() const { return comm_s_; }  // time spent in allreduce_gradient
  int64_t bucket_floats = int64_t(1) << 20;         // 4 MiB buckets (rounded to world)

 private:
  int rank_ = 0, world_ = 1;
  bool initialised_ = false;
  double comm_s_ = 0;
};

// FNV-1a of a string, for check_same().
uint64_t hash_text(const std::string& s);

}  // namespace infini::train
