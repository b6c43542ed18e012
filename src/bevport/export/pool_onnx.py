"""The camera-only recipe's `pool` part, written as ONNX directly (it has no weights, so no tracing).

    depth [N,D,fH,fW] -> rows of depth over image rows [N*D*fW, fH] -> Gather(pool_rows) [N*fW, G, fH] * pool_mask
    context [N,C,fH,fW] -> columns [N*fW, fH, C]
    MatMul -> group sums [N*fW*G, C] -> Gather(pool_first): each cell's first sum, [nx*ny + 1, C]
                                     -> Gather(pool_order): the further sums [R, C] -> ScatterElements(add) by
    pool_cells onto the first sums -> drop the spare row -> bev [1, C, nx, ny]

Gathering each cell's first sum leaves the scatter-add (the slowest op: 14 of 37 ms before) only the cells' second
and later groups: a third of the sums on a nuScenes-like rig (the pool part about 20% faster on 2 AVX2 cores).

Opset 16 for ScatterElements' `reduction="add"` (duplicate indices accumulate), which neither a traced
`index_add_` at the export image's opset 13 nor a `scatter_add` exported by torch 1.11 can express. Standard ops
only: any OpenVINO device runs it without an extension. `bevport.geometry.lss_depth.pool` is the same computation in
NumPy, and the tables come from `lss_depth.pool_tables`.
"""
from __future__ import annotations

from typing import Sequence

OPSET = 16


def pool_model(names_in: Sequence[str], name_out: str, cameras: int, depth_bins: int, feature_size: Sequence[int],
               channels: int, groups: int, scatter_rows: int, grid: Sequence[int]):
    """The pool graph for N = `cameras`, D, (fH, fW), C = `channels`, G = `groups` per column, R = `scatter_rows`
    further group sums scattered, and BEV (nx, ny)."""
    import onnx
    from onnx import TensorProto, helper

    context, depth, rows, mask, first, order, cells = names_in
    n, d, c, g, r = cameras, depth_bins, channels, groups, scatter_rows
    fh, fw = feature_size
    nx, ny = grid

    def const(name: str, values) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, TensorProto.INT64, [len(values)], [int(v) for v in values]))

    nodes = [
        const("shape_depth_rows", [n * d * fw, fh]),
        const("shape_columns", [n * fw, fh, c]),
        const("shape_sums", [n * fw * g, c]),
        const("shape_cells", [r, 1]),
        const("shape_bev", [nx, ny, c]),
        const("zero", [0]), const("grid_cells", [nx * ny]), const("axis0", [0]),
        # depth [N,D,fH,fW] -> [N,D,fW,fH] -> one row per (camera, bin, column) over the image rows
        helper.make_node("Transpose", [depth], ["depth_t"], perm=[0, 1, 3, 2]),
        helper.make_node("Reshape", ["depth_t", "shape_depth_rows"], ["depth_rows"]),
        helper.make_node("Gather", ["depth_rows", rows], ["group_rows"], axis=0),         # [N*fW, G, fH]
        helper.make_node("Mul", ["group_rows", mask], ["weights"]),
        # context [N,C,fH,fW] -> [N,fW,fH,C] -> one [fH, C] matrix per (camera, column)
        helper.make_node("Transpose", [context], ["context_t"], perm=[0, 3, 2, 1]),
        helper.make_node("Reshape", ["context_t", "shape_columns"], ["columns"]),
        helper.make_node("MatMul", ["weights", "columns"], ["group_sums"]),               # [N*fW, G, C]
        helper.make_node("Reshape", ["group_sums", "shape_sums"], ["all_sums"]),
        helper.make_node("Gather", ["all_sums", first], ["canvas"], axis=0),              # [nx*ny + 1, C]
        helper.make_node("Reshape", ["canvas", "flat"], ["canvas_flat"]),
        helper.make_node("Gather", ["all_sums", order], ["sums"], axis=0),                 # the further groups
        # element index cell * C + channel of every group sum, by broadcasting arithmetic (an Expand of the cell
        # column runs a reference kernel), then one flat ScatterElements(add): ScatterND's reduction needs a newer
        # OpenVINO than the export image's 2024.4
        helper.make_node("Reshape", [cells, "shape_cells"], ["cells_col"]),                # int32 throughout:
        helper.make_node("Mul", ["cells_col", "channels"], ["cell_offsets"]),              # half the index traffic
        helper.make_node("Add", ["cell_offsets", "channel_range"], ["element_index"]),          # [R, C]
        helper.make_node("Reshape", ["element_index", "flat"], ["scatter_index"]),
        helper.make_node("Reshape", ["sums", "flat"], ["flat_sums"]),
        helper.make_node("ScatterElements", ["canvas_flat", "scatter_index", "flat_sums"], ["summed_flat"], axis=0,
                         reduction="add"),
        helper.make_node("Reshape", ["summed_flat", "shape_canvas"], ["summed"]),
        helper.make_node("Slice", ["summed", "zero", "grid_cells", "axis0"], ["cell_sums"]),   # spare row dropped
        helper.make_node("Reshape", ["cell_sums", "shape_bev"], ["bev_xyc"]),
        helper.make_node("Transpose", ["bev_xyc"], ["bev_cxy"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["bev_cxy", "axis0"], [name_out]),
    ]
    nodes[:0] = [const("shape_canvas", [nx * ny + 1, c]), const("flat", [-1]),
                 helper.make_node("Constant", [], ["channels"], value=helper.make_tensor(
                     "channels", TensorProto.INT32, [1], [c])),
                 helper.make_node("Constant", [], ["channel_range"], value=helper.make_tensor(
                     "channel_range", TensorProto.INT32, [1, c], list(range(c))))]
    inputs = [
        helper.make_tensor_value_info(context, TensorProto.FLOAT, [n, c, fh, fw]),
        helper.make_tensor_value_info(depth, TensorProto.FLOAT, [n, d, fh, fw]),
        helper.make_tensor_value_info(rows, TensorProto.INT32, [n * fw, g]),
        helper.make_tensor_value_info(mask, TensorProto.FLOAT, [n * fw, g, fh]),
        helper.make_tensor_value_info(first, TensorProto.INT32, [nx * ny + 1]),
        helper.make_tensor_value_info(order, TensorProto.INT32, [r]),
        helper.make_tensor_value_info(cells, TensorProto.INT32, [r]),
    ]
    output = helper.make_tensor_value_info(name_out, TensorProto.FLOAT, [1, c, nx, ny])
    model = helper.make_model(helper.make_graph(nodes, "pool", inputs, [output]),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bevport")
    onnx.checker.check_model(model, full_check=True)
    return model

