// Crash-safe checkpoint directories.
//
// Layout under a run's output directory OUT:
//   OUT/checkpoints/step-00000300/   one complete checkpoint (contents chosen by the caller)
//   OUT/checkpoints/.tmp-*           a checkpoint being written (never read, removed at start)
//   OUT/latest                       text: "checkpoints/step-00000300", replaced atomically
//   OUT/*.tmp.PID, OUT/.tmp-final-PID  temps of atomic writes (removed at start when PID is not us)
//
// commit_checkpoint writes everything into a temporary directory, fsyncs every file and the
// directory, renames it into place, fsyncs the parent, and only then replaces `latest`. A crash
// at any point leaves the previous checkpoint and pointer intact; a half-written directory is
// never named by `latest` nor matched by find_latest_checkpoint.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace infini::train {

std::string checkpoint_name(int64_t step);  // "step-00000300"

// fill(dir) writes the checkpoint's files into the (empty, existing) temporary `dir`.
// Afterwards at most `keep` checkpoints remain (the oldest are removed, never the new one).
// Returns the final directory path.
std::string commit_checkpoint(const std::string& out, int64_t step,
                              const std::function<void(const std::string& dir)>& fill,
                              int64_t keep);

// The checkpoint named by OUT/latest; when the pointer is missing or stale (a crash between
// the rename and the pointer update), the highest-numbered complete step directory. A
// directory counts as complete when it holds `marker` (the file the caller writes last).
std::optional<std::string> find_latest_checkpoint(const std::string& out,
                                                  const std::string& marker = "trainer.json");

// Removes what interrupted writes left behind: OUT/checkpoints/.tmp-* directories, and in OUT
// the temps of other processes (by the pid in their name): "latest.tmp.PID" and the like
// (model::write_file_atomic) and ".tmp-final-PID/" (publish_directory); a ".old-final-PID/" is
// renamed back to final/ when final/ is missing, else removed. Called at the start of a run.
void remove_stale_checkpoint_temps(const std::string& out);

// Publishes a directory atomically: fill(tmp) writes into a temporary sibling of `dest`,
// which is fsynced and then renamed over an older `dest` (used for OUT/final).
void publish_directory(const std::string& dest,
                       const std::function<void(const std::string& dir)>& fill);

void fsync_path(const std::string& path);  // a file or a directory; throws naming the path

}  // namespace infini::train
