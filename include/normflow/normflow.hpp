// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Umbrella header: everything but the Kokkos backend (<normflow/kokkos.hpp>).

#include <normflow/config.hpp>
#include <normflow/version.hpp>
#include <normflow/errors.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/lattice/site_order.hpp>
#include <normflow/lattice/neighbor_table.hpp>
#include <normflow/field/field.hpp>
#include <normflow/simd/pack.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/random/philox.hpp>
#include <normflow/prior/normal_prior.hpp>
#include <normflow/prior/uniform_prior.hpp>
#include <normflow/action/scalar_phi4_action.hpp>
#include <normflow/diagnostics/metrics.hpp>
#include <normflow/diagnostics/jackknife.hpp>
#include <normflow/diagnostics/sanity.hpp>
#include <normflow/io/checkpoint.hpp>
#include <normflow/io/npy.hpp>
#include <normflow/transform/result.hpp>
#include <normflow/transform/math.hpp>
#include <normflow/transform/elementwise.hpp>
#include <normflow/transform/coupling_transforms.hpp>
#include <normflow/transform/rq_spline.hpp>
#include <normflow/transform/dist_convertor.hpp>
#include <normflow/layer/module.hpp>
#include <normflow/layer/elementwise_layer.hpp>
#include <normflow/layer/conditioner/activation.hpp>
#include <normflow/layer/conditioner/conv_net.hpp>
#include <normflow/layer/conditioner/conv_net_spec.hpp>
#include <normflow/layer/conditioner/dense_net.hpp>
#include <normflow/layer/coupling.hpp>
#include <normflow/layer/dist_convertor_layer.hpp>
#include <normflow/layer/module_list.hpp>
#include <normflow/flow/flow.hpp>
#include <normflow/model.hpp>
