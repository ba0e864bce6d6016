// The web UI's entry: server state (TanStack Query) and the router; every
// page has its own path under /ui/, so each is a deep link.
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { createBrowserRouter, RouterProvider } from "react-router";
import { Layout } from "./components/Layout";
import { JobPage } from "./pages/JobPage";
import { NotFound } from "./pages/NotFound";
import { ProjectPage } from "./pages/ProjectPage";
import { ProjectsPage } from "./pages/ProjectsPage";
import { RunsPage } from "./pages/RunsPage";
import { WorkflowPage } from "./pages/WorkflowPage";
import "./styles.css";

const queryClient = new QueryClient({
  defaultOptions: { queries: { retry: 1, refetchOnWindowFocus: false } },
});

const router = createBrowserRouter(
  [
    {
      element: <Layout />,
      children: [
        { path: "/", element: <ProjectsPage /> },
        { path: "/projects/:projectId", element: <ProjectPage /> },
        { path: "/workflows/:workflowId", element: <WorkflowPage tab="editor" /> },
        { path: "/workflows/:workflowId/triggers", element: <WorkflowPage tab="triggers" /> },
        { path: "/runs", element: <RunsPage /> },
        { path: "/jobs/:jobId", element: <JobPage /> },
        { path: "*", element: <NotFound /> },
      ],
    },
  ],
  { basename: "/ui" },
);

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <RouterProvider router={router} />
    </QueryClientProvider>
  </StrictMode>,
);
