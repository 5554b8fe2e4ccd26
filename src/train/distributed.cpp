#include "train/distributed.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/process.hpp"
#include "train/data.hpp"

#ifdef INFINI_WITH_MPI
#include <mpi.h>
#endif

namespace infini::train {

namespace {

// The process count mpirun (OpenMPI) or a PMI launcher (MPICH/Hydra, Slurm) announces; 0
// when the process was started some other way.
int launcher_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* v = std::getenv(var)) return std::max(1, std::atoi(v));
  return 0;
}

}  // namespace

uint64_t hash_text(const std::string& s) { return fnv1a(s.data(), s.size()); }

#ifdef INFINI_WITH_MPI

namespace {

void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw Error(std::string("MPI ") + what + " failed: " + std::string(msg, size_t(len)));
  }
}

}  // namespace

Distributed::Distributed() {
  if (launcher_world_size() == 0) return;  // plain launch: single process, MPI untouched
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    // Only the main thread calls MPI; OpenMP threads never do.
    int provided = 0;
    mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "init");
    initialised_ = true;
  }
  // Errors come back as codes (turned into infini::Error) instead of aborting inside MPI.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_);
}

Distributed::~Distributed() {
  if (initialised_) MPI_Finalize();
}

void Distributed::check_same(uint64_t hash, const std::string& what) {
  if (world_ == 1) return;
  uint64_t lo = hash, hi = hash;
  mpi_check(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD),
            "allreduce");
  mpi_check(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD),
            "allreduce");
  if (lo != hi)
    throw CollectiveError(what + ": not the same on all " + std::to_string(world_) +
                          " MPI processes (rank " + std::to_string(rank_) + " has " +
                          hex64(hash) + "); every rank must be given the same");
}

bool Distributed::any(bool flag) {
  if (world_ == 1) return flag;
  int v = flag ? 1 : 0;
  mpi_check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "allreduce");
  return v != 0;
}

void Distributed::allreduce_gradient(StepGradient& sg) {
  if (world_ == 1) return;
  const double t0 = now_s();
  double loss = sg.loss_sum;
  int64_t predicted = sg.predicted;
  mpi_check(MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
            "allreduce");
  mpi_check(MPI_Allreduce(MPI_IN_PLACE, &predicted, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD),
            "allreduce");
  sg.loss_sum = loss;
  sg.predicted = predicted;

  // Buckets of at most `bucket` floats; each is padded to a multiple of the world size so
  // that the reduce-scatter gives every rank an equal chunk.
  const int64_t P = world_, n = sg.size;
  const int64_t bucket = std::max<int64_t>(P, bucket_floats / P * P);
  const int64_t nb = (n + bucket - 1) / bucket;
  struct Bucket {
    int64_t offset, len, chunk;
  };
  std::vector<Bucket> buckets;
  int64_t staged = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t off = b * bucket, len = std::min(bucket, n - off);
    buckets.push_back({off, len, (len + P - 1) / P});
    staged += buckets.back().chunk * P;
  }
  // send: the padded buckets (later also the all-gather's destination); recv: own chunks.
  std::vector<float> send(static_cast<size_t>(staged), 0.0f), recv(static_cast<size_t>(staged / P));
  std::vector<int64_t> send_at(static_cast<size_t>(nb)), recv_at(static_cast<size_t>(nb));
  std::vector<MPI_Request> reqs(static_cast<size_t>(nb), MPI_REQUEST_NULL);
  int64_t s = 0, r = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const Bucket& k = buckets[size_t(b)];
    send_at[size_t(b)] = s;
    recv_at[size_t(b)] = r;
    std::copy_n(sg.grad + k.offset, k.len, send.data() + s);
    mpi_check(MPI_Ireduce_scatter_block(send.data() + s, recv.data() + r, int(k.chunk),
                                        MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &reqs[size_t(b)]),
              "reduce-scatter");
    s += k.chunk * P;
    r += k.chunk;
  }
  // As each bucket's reduce-scatter completes, start its all-gather: later buckets' reduction
  // overlaps earlier buckets' gather.
  std::vector<MPI_Request> gathers(static_cast<size_t>(nb), MPI_REQUEST_NULL);
  for (int64_t done = 0; done < nb; ++done) {
    int idx = MPI_UNDEFINED;
    mpi_check(MPI_Waitany(int(nb), reqs.data(), &idx, MPI_STATUS_IGNORE), "wait");
    const Bucket& k = buckets[size_t(idx)];
    mpi_check(MPI_Iallgather(recv.data() + recv_at[size_t(idx)], int(k.chunk), MPI_FLOAT,
                             send.data() + send_at[size_t(idx)], int(k.chunk), MPI_FLOAT,
                             MPI_COMM_WORLD, &gathers[size_t(idx)]),
              "all-gather");
  }
  for (int64_t done = 0; done < nb; ++done) {
    int idx = MPI_UNDEFINED;
    mpi_check(MPI_Waitany(int(nb), gathers.data(), &idx, MPI_STATUS_IGNORE), "wait");
    const Bucket& k = buckets[size_t(idx)];
    std::copy_n(send.data() + send_at[size_t(idx)], k.len, sg.grad + k.offset);
  }
  comm_s_ += now_s() - t0;
}

void Distributed::abort_on_error(const std::string& message) {
  if (world_ == 1) return;
  std::fprintf(stderr, "infini: error (MPI rank %d of %d): %s\n", rank_, world_,
               message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);  // MPI_Abort does not return; this keeps the promise if it ever did
}

#else  // no MPI: one process

Distributed::Distributed() {
  const int n = launcher_world_size();
  if (n > 1)
    throw Error("started by an MPI launcher with " + std::to_string(n) +
                " processes, but this build of infini has no MPI support (install "
                "libopenmpi-dev and rebuild; docs/distributed.md)");
}
Distributed::~Distributed() = default;
void Distributed::check_same(uint64_t, const std::string&) {}
bool Distributed::any(bool flag) { return flag; }
void Distributed::allreduce_gradient(StepGradient&) {}
void Distributed::abort_on_error(const std::string&) {}

#endif

}  // namespace infini::train
